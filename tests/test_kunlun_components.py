"""Kunlun components against their definitions: SumKronLinear vs the explicit Kronecker weight, ROTE
(rotation, time-shift invariance, relative scores), GDPA (naive vs a per-example per-head loop for
every activation and scale position, fused == naive), windowed attention vs full attention with an
explicit band mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend_utils import gdpa_heads_and_mask, one_intra_op_thread
from kunbench.backends.gdpa_ops import gdpa_pffn, gdpa_seed_pool, gdpa_self_attention
from kunbench.backends.hsp import HSP, FullTokenLinear, PMASummary, SumKronLinear
from kunbench.backends.rote import age_phi, apply_rope, full_tables, rotary_tables, rotate, rote_tables
from kunbench.backends.window_attention import WindowSelfAttention, softmax_window_attention
from kunbench.kernels.gdpa_reference import ACTIVATIONS, activation_fn

D = torch.float64


def lengths_mask(lengths, t):
    return torch.arange(t)[None, :] < torch.as_tensor(lengths)[:, None]



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids contention on a busy machine (60x here)."""
    with one_intra_op_thread():
        yield

# ---- SumKronLinear ------------------------------------------------------------------------------
def test_sumkron_equals_full_linear_map_with_kron_weight():
    torch.manual_seed(0)
    n_in, n_out, d_in, d_out, k, b = 8, 2, 5, 3, 4, 3
    m = SumKronLinear(n_in, n_out, d_in, d_out, k).double()
    x = torch.randn(b, n_in, d_in, dtype=D)
    y = m(x)
    assert y.shape == (b, n_out, d_out)
    # vec() is column-major: vec(A X B) = (B^T kron A) vec(X)
    weight = sum(torch.kron(m.w[i], m.z[i]) for i in range(k))  # [d_in n_in, d_out n_out]
    assert torch.allclose(weight, m.kron_weight())
    vec_x = x.transpose(1, 2).reshape(b, -1)
    vec_y = y.transpose(1, 2).reshape(b, -1)
    assert torch.allclose(vec_x @ weight, vec_y, atol=1e-12)
    # and the definition Y_b = sum_i Z_i^T X_b W_i
    direct = sum(m.z[i].T @ x @ m.w[i] for i in range(k))
    assert torch.allclose(direct, y, atol=1e-12)
    # parameters: k (n_seed n_tok + d d') instead of n_seed d n_tok d'
    assert sum(p.numel() for p in m.parameters()) == k * (n_in * n_out + d_in * d_out)
    full = FullTokenLinear(n_in, n_out, d_in, d_out)
    assert sum(p.numel() for p in full.parameters()) == n_in * d_in * n_out * d_out


# ---- ROTE ---------------------------------------------------------------------------------------
def test_rote_keeps_norms_and_scores_depend_on_differences_only():
    torch.manual_seed(1)
    dh = 8
    q = torch.randn(1, 1, 1, dh, dtype=D)
    k = torch.randn(1, 1, 1, dh, dtype=D)

    def rot(x, pos, phi):
        cos, sin = rote_tables(torch.tensor([[pos]]), torch.tensor([[phi]], dtype=D), dh, dtype=D)
        return apply_rope(x, cos, sin)

    # norm preserved
    assert torch.allclose(rot(q, 5, 2.3).norm(), q.norm())
    # q_i . k_j depends on (i - j, phi_i - phi_j) only
    base = (rot(q, 7, 3.0) * rot(k, 2, 1.5)).sum()
    for dp, dphi in [(3, 0.7), (11, -1.2), (0, 4.0)]:
        shifted = (rot(q, 7 + dp, 3.0 + dphi) * rot(k, 2 + dp, 1.5 + dphi)).sum()
        assert torch.allclose(shifted, base, atol=1e-10)
    # time bands really rotate: changing only the time difference changes the score
    assert not torch.allclose((rot(q, 7, 3.0) * rot(k, 2, 2.5)).sum(), base)
    # and position bands too
    assert not torch.allclose((rot(q, 8, 3.0) * rot(k, 2, 1.5)).sum(), base)


def test_rote_scores_unchanged_when_all_timestamps_shift():
    torch.manual_seed(2)
    b, t, h, dh = 2, 6, 2, 8
    ts = torch.tensor([[1_700_000_000 - 3600 * j * (r + 1) for j in range(t, 0, -1)] for r in range(b)])
    req = torch.tensor([1_700_000_100, 1_700_000_500])
    q = torch.randn(b, t, h, dh)
    k = torch.randn(b, t, h, dh)

    def scores(ts, req):
        cos, sin = rotary_tables("rote", ts, req, dh, t_scale=3600.0, rope_base=1e4, time_base=10.0,
                                 dtype=torch.float32)
        qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        assert torch.allclose(rotate(q, *full_tables(cos, sin, h)), qr, atol=1e-6)  # the model's prebuilt form
        assert torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
        return torch.einsum("bihd,bjhd->bhij", qr, kr)

    ref = scores(ts, req)
    assert torch.allclose(scores(ts + 86_400 * 365, req + 86_400 * 365), ref, atol=1e-5)
    # phi = log(1 + dt / t_scale), dt = request_ts - ts
    phi = age_phi(ts, req, 3600.0)
    assert torch.allclose(phi, torch.log1p((req[:, None] - ts).double() / 3600).float())
    # ROTE differs from RoPE and from no rotation
    assert not torch.allclose(scores(ts, req - 7200), ref, atol=1e-3)
    assert rotary_tables("none", ts, req, dh, t_scale=3600.0, rope_base=1e4, time_base=10.0,
                         dtype=torch.float32) is None


# ---- GDPA ---------------------------------------------------------------------------------------
def loop_pffn(q, lengths, k, v, names, scale, position):
    b, t, h, dh = q.shape
    out = torch.zeros_like(q)
    for i in range(b):
        n = int(lengths[i])
        for j in range(h):
            a = q[i, :n, j] @ k[i, :, j].T  # [T, F]
            act = activation_fn(names[j])
            w = act(a) * scale if position == "post" else act(a * scale)
            out[i, :n, j] = w @ v[i, :, j]
    return out


@pytest.mark.parametrize("position", ["post", "pre"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS) + ["mixed"])
def test_gdpa_pffn_naive_equals_loop_and_fused(activation, position):
    b, t, h, dh, f = 3, 7, 2, 4, 5
    lengths = [7, 3, 0]
    names, mask = gdpa_heads_and_mask(3, activation, h, lengths, t, mixed=("gelu", "relu"))
    q = torch.randn(b, t, h, dh, dtype=D)
    q = torch.where(mask[..., None, None], q, torch.full_like(q, 1e3))  # garbage in padding
    k, v = torch.randn(b, f, h, dh, dtype=D), torch.randn(b, f, h, dh, dtype=D)
    want = loop_pffn(q, lengths, k, v, names, 1 / 7, position)
    naive = gdpa_pffn(q, mask, k, v, activations=names, scale=1 / 7, position=position, impl="naive")
    fused = gdpa_pffn(q, mask, k, v, activations=names, scale=1 / 7, position=position, impl="fused")
    assert torch.allclose(naive, want, atol=1e-12)
    assert torch.allclose(fused, want, atol=1e-12)


@pytest.mark.parametrize("position", ["post", "pre"])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "mixed"])
def test_gdpa_seed_pool_naive_equals_loop_and_fused(activation, position):
    b, t, h, dh, n = 3, 6, 2, 4, 5
    lengths = [6, 2, 0]
    names, mask = gdpa_heads_and_mask(4, activation, h, lengths, t, mixed=("identity", "silu"))
    seeds = torch.randn(n, h, dh, dtype=D)
    k, v = torch.randn(b, t, h, dh, dtype=D), torch.randn(b, t, h, dh, dtype=D)
    want = torch.zeros(b, n, h, dh, dtype=D)
    for i in range(b):
        m = lengths[i]
        for j in range(h):
            a = seeds[:, j] @ k[i, :m, j].T
            act = activation_fn(names[j])
            w = act(a) * 0.25 if position == "post" else act(a * 0.25)
            want[i, :, j] = w @ v[i, :m, j]
    for impl in ("naive", "fused"):
        got = gdpa_seed_pool(seeds, k, v, mask, activations=names, scale=0.25, position=position, impl=impl)
        assert torch.allclose(got, want, atol=1e-12), impl


@pytest.mark.parametrize("window", [None, 1, 2, 10])
@pytest.mark.parametrize("position", ["post", "pre"])
def test_gdpa_self_attention_naive_equals_loop_and_fused(window, position):
    torch.manual_seed(5)
    b, t, h, dh = 3, 9, 2, 4
    names = ["relu", "gelu"]
    lengths = [9, 4, 1]
    mask = lengths_mask(lengths, t)
    q, k, v = (torch.randn(b, t, h, dh, dtype=D) for _ in range(3))
    want = torch.zeros_like(q)
    for i in range(b):
        m = lengths[i]
        for j in range(h):
            a = q[i, :m, j] @ k[i, :m, j].T
            act = activation_fn(names[j])
            w = act(a) * 0.2 if position == "post" else act(a * 0.2)
            if window is not None:
                idx = torch.arange(m)
                w = w * ((idx[:, None] - idx[None, :]).abs() <= window)
            want[i, :m, j] = w @ v[i, :m, j]
    for impl in ("naive", "fused"):
        got = gdpa_self_attention(q, k, v, mask, activations=names, scale=0.2, position=position,
                                  window=window, impl=impl)
        assert torch.allclose(got, want, atol=1e-12), impl


# ---- windowed softmax attention -----------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["naive", "sdpa"])
@pytest.mark.parametrize("window, t", [(1, 9), (2, 30), (3, 40), (8, 12), (0, 20), (None, 11)])
def test_window_attention_equals_full_attention_with_band_mask(kernel, window, t):
    torch.manual_seed(6)
    b, h, dh = 3, 2, 4
    lengths = [t, t // 2, 0]
    mask = lengths_mask(lengths, t)
    q, k, v = (torch.randn(b, t, h, dh, dtype=D) for _ in range(3))
    k = torch.where(mask[..., None, None], k, torch.full_like(k, 1e3))
    got = softmax_window_attention(q, k, v, mask, window, kernel)
    want = torch.zeros_like(q)
    for i in range(b):
        m = lengths[i]
        if m == 0:
            continue
        band = torch.ones(m, m, dtype=torch.bool)
        if window is not None:
            idx = torch.arange(m)
            band = (idx[:, None] - idx[None, :]).abs() <= window
        o = F.scaled_dot_product_attention(q[i, :m].transpose(0, 1), k[i, :m].transpose(0, 1),
                                           v[i, :m].transpose(0, 1), attn_mask=band)
        want[i, :m] = o.transpose(0, 1)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, atol=1e-10)


def test_window_block_with_rote_padding_and_gdpa_mode():
    torch.manual_seed(7)
    d, h, t = 8, 2, 20
    for act in (None, "silu"):
        blk = WindowSelfAttention(d, h, window=3, attention_act=act, kernel="sdpa", gdpa_impl="naive").double()
        s = torch.randn(2, t, d, dtype=D)
        mask = lengths_mask([t, 12], t)
        ts = torch.arange(t)[None].expand(2, t) * 600 + 1_700_000_000
        req = torch.tensor([1_700_100_000, 1_700_100_000])
        rot = full_tables(*rotary_tables("rote", ts, req, d // h, t_scale=3600.0, rope_base=1e4, time_base=10.0,
                                         dtype=D), h)
        full = blk(s, mask, rot, maxlen=t)
        # row 1 alone, unpadded
        rot1 = tuple(r[1:, :12] for r in rot)
        one = blk(s[1:, :12], torch.ones(1, 12, dtype=torch.bool), rot1, maxlen=t)
        assert torch.allclose(full[1, :12], one[0], atol=1e-10)


@pytest.mark.parametrize("seed_attention", ["gdpa", "softmax"])
def test_summaries_ignore_padding_and_empty_rows_are_finite(seed_attention):
    torch.manual_seed(8)
    d_e, d, t = 8, 12, 10
    for mod in (HSP(d_e, d, 2, n_tok=2, seed_attention=seed_attention, gdpa_impl="naive").double(),
                PMASummary(d_e, d, 2, n_tok=2).double()):
        s = torch.randn(3, t, d_e, dtype=D)
        mask = lengths_mask([10, 4, 0], t)
        garbage = torch.where(mask[..., None], s, torch.randn_like(s) * 1e3)
        out = mod(garbage, mask, 0.1)
        assert out.shape == (3, 2, d) and torch.isfinite(out).all()
        ref = mod(s[1:2, :4], torch.ones(1, 4, dtype=torch.bool), 0.1)
        assert torch.allclose(out[1], ref[0], atol=1e-10)
