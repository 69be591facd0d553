"""The models' GDPA dispatcher (`backends.gdpa_ops`): the padded-layout Triton op (under the Triton
interpreter, float32) against the batched-matmul path, and the rules that pick a kernel."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kunbench.backends.gdpa_ops import (GDPAKernel, gdpa_pffn, gdpa_seed_pool, gdpa_self_attention,  # noqa: E402
                                        normalize_choice, resolve_gdpa)
from kunbench.errors import KunbenchError  # noqa: E402
from kunbench.kernels import ACTIVATION_IDS  # noqa: E402

ATOL = RTOL = 1e-4
LENGTHS = [0, 1, 17, 5]


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("KUNBENCH_KERNELS", raising=False)


def padded(lengths, t, heads, dh, seed):
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(b, t, heads, dh, generator=g)
    garbage = torch.randn(b, t, heads, dh, generator=g) * 100.0  # padding must not matter
    return torch.where(mask[..., None, None], x, garbage), mask


def run_both(fn, inputs, **kw):
    outs, grads = [], []
    for impl in ("triton", "torch"):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves, impl=impl, **kw)
        out.backward(torch.ones_like(out) * torch.linspace(-1, 1, out.numel()).view(out.shape))
        outs.append(out.detach())
        grads.append([lf.grad for lf in leaves])
    return outs, grads


def assert_match(outs, grads, mask=None):
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=RTOL)
    for a, b in zip(*grads):
        if mask is not None and a.shape[:2] == mask.shape:  # padded rows: the torch path may leave garbage grads 0
            a, b = a * mask[..., None, None], b * mask[..., None, None]
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("position", ["post", "pre"])
@pytest.mark.parametrize("tensor_scale", [False, True])
def test_pffn_triton_matches_torch(interpret, position, tensor_scale):
    q, mask = padded(LENGTHS, 19, 2, 8, seed=1)
    g = torch.Generator().manual_seed(2)
    k, v = torch.randn(4, 5, 2, 8, generator=g), torch.randn(4, 5, 2, 8, generator=g)
    scale = torch.tensor(1 / 17) if tensor_scale else 1 / 17
    outs, grads = run_both(lambda q, k, v, impl: gdpa_pffn(q, mask, k, v, activations=["gelu", "silu"], scale=scale,
                                                           position=position, impl=impl), [q, k, v])
    assert torch.all(outs[0][~mask] == 0)
    assert_match(outs, grads, mask)


@pytest.mark.parametrize("position", ["post", "pre"])
def test_seed_pool_triton_matches_torch(interpret, position):
    k, mask = padded(LENGTHS, 18, 2, 8, seed=3)
    v, _ = padded(LENGTHS, 18, 2, 8, seed=4)
    seeds = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(5))
    outs, grads = run_both(lambda s, k, v, impl: gdpa_seed_pool(s, k, v, mask, activations=["silu", "relu"],
                                                                scale=torch.tensor(0.25), position=position, impl=impl),
                           [seeds, k, v])
    assert_match(outs, grads, mask)


@pytest.mark.parametrize("window", [None, 0, 2, 40])
def test_self_attention_triton_matches_torch(interpret, window):
    q, mask = padded(LENGTHS, 20, 2, 8, seed=6)
    k, _ = padded(LENGTHS, 20, 2, 8, seed=7)
    v, _ = padded(LENGTHS, 20, 2, 8, seed=8)
    outs, grads = run_both(lambda q, k, v, impl: gdpa_self_attention(q, k, v, mask, activations=["gelu_tanh", "gelu"],
                                                                     scale=0.2, window=window, impl=impl), [q, k, v])
    assert_match(outs, grads, mask)


def test_padded_op_opcheck(interpret):
    q, mask = padded([3, 0, 2], 4, 1, 4, seed=9)
    lengths = mask.sum(1)
    leaves = tuple(t.clone().requires_grad_() for t in (q, q.clone(), q.clone()))
    torch.library.opcheck(torch.ops.kunbench.gdpa_padded_fwd.default,
                          leaves + (lengths, lengths, [ACTIVATION_IDS["gelu"]], 0.5, False, 1, False))


def test_dispatch_rules(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("KUNBENCH_KERNELS", raising=False)
    assert resolve_gdpa("auto", "cpu") is GDPAKernel.TORCH
    assert resolve_gdpa("naive", "cpu") is GDPAKernel.TORCH and normalize_choice("fused") == "auto"
    with pytest.raises(KunbenchError) as exc:  # triton on a CPU tensor outside the interpreter
        resolve_gdpa("triton", "cpu")
    assert "gdpa=triton" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(KunbenchError, match="gdpa must be"):
        normalize_choice("cudnn")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("KUNBENCH_KERNELS", "triton")  # the variable sets what auto means
    assert resolve_gdpa("auto", "cpu") is GDPAKernel.TRITON
    assert resolve_gdpa("torch", "cpu") is GDPAKernel.TORCH  # an explicit choice wins
