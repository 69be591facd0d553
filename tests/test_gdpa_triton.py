"""The Triton GDPA kernels against the PyTorch reference, in float32 under the Triton interpreter.

TRITON_INTERPRET=1 is set per test with monkeypatch (the `interpret` fixture), never at import:
kunbench reads the variable when a kernel is launched and keeps interpreted and compiled kernels in
separate modules (`gdpa_triton.kernel_module`), so nothing leaks into other test modules. Shapes are
tiny and blocks 16 wide (the interpreter runs every program in Python). The CUDA test at the end
checks bf16 against a float32 reference and is skipped without a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("triton")

from kunbench.kernels import ACTIVATION_IDS, ACTIVATIONS, gdpa, gdpa_flops, select_implementation  # noqa: E402
from kunbench.kernels import gdpa_triton  # noqa: E402
from kunbench.ops.jagged import lengths_to_offsets  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4  # float32 kernel vs float32 reference; observed errors are ~1e-6


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("KUNBENCH_KERNELS", raising=False)


def offsets_of(lengths):
    return lengths_to_offsets(torch.tensor(lengths, dtype=torch.int64))


def make(mode, lengths, heads, dh, f=19, seeds=7, seed=0, dtype=torch.float32, device="cpu"):
    """Inputs and gdpa kwargs for one mode: pffn (dense k/v), seed (broadcast q), self (jagged q=k=v)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    n, b = sum(lengths), len(lengths)
    off = offsets_of(lengths).to(device)
    if mode == "pffn":
        return (rn(n, heads, dh), rn(b, f, heads, dh), rn(b, f, heads, dh)), dict(q_offsets=off)
    if mode == "pffn_broadcast":
        return (rn(seeds, heads, dh), rn(b, f, heads, dh), rn(b, f, heads, dh)), dict(broadcast_q=True)
    if mode == "seed":
        return (rn(seeds, heads, dh), rn(n, heads, dh), rn(n, heads, dh)), dict(kv_offsets=off, broadcast_q=True)
    assert mode == "self"
    return (rn(n, heads, dh), rn(n, heads, dh), rn(n, heads, dh)), dict(q_offsets=off, kv_offsets=off)


def check(inputs, kwargs, atol=ATOL, rtol=RTOL, backward=True):
    """Forward and dq, dk, dv of the triton path (through the custom op) vs the reference."""
    leaves = [t.detach().clone().requires_grad_(backward) for t in inputs]
    out = gdpa(*leaves, implementation="triton", **kwargs)
    ref_leaves = [t.detach().clone().requires_grad_(backward) for t in inputs]
    ref = gdpa(*ref_leaves, implementation="torch", **kwargs)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    if not backward:
        return out
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)).to(ref)
    got = torch.autograd.grad(out, leaves, grad, allow_unused=True)
    want = torch.autograd.grad(ref, ref_leaves, grad, allow_unused=True)
    for name, a, b in zip("qkv", got, want):
        b = torch.zeros_like(ref_leaves["qkv".index(name)]) if b is None else b
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"d{name}: {m}")
    return out


# lengths: empty, 1, a prime above the 16-row block, a small prime; F=19 and d_h=20 are not
# multiples of the block (16) and d_h pads to 32.
LENGTHS = [0, 1, 17, 5]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("mode", ["pffn", "seed", "self"])
def test_modes_and_activations_match_reference(interpret, mode, activation):
    inputs, kwargs = make(mode, LENGTHS, heads=2, dh=20, seeds=19)  # 19 seeds: two q blocks
    check(inputs, dict(kwargs, activation=activation))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_windowed_self_attention(interpret, activation):
    inputs, kwargs = make("self", [0, 1, 23, 6], heads=1, dh=8, seed=1)
    check(inputs, dict(kwargs, activation=activation, window=3))


@pytest.mark.parametrize("mode", ["pffn", "seed", "self", "pffn_broadcast"])
def test_pre_scale_and_per_head_activations(interpret, mode):
    # one head per activation: the mixed-head launch groups and the pre-activation scale together
    inputs, kwargs = make(mode, [3, 0, 17], heads=5, dh=4, seed=2)
    check(inputs, dict(kwargs, activation=list(ACTIVATIONS), scale_position="pre"))


def test_explicit_scale_and_windows_zero_and_wide(interpret):
    inputs, kwargs = make("self", [4, 9], heads=2, dh=3, seed=3)
    check(inputs, dict(kwargs, activation="silu", scale=0.37))
    check(inputs, dict(kwargs, activation="gelu", window=0, scale_position="pre"))
    check(inputs, dict(kwargs, activation="relu", window=50))


@pytest.mark.parametrize("mode", ["pffn", "seed", "self"])
def test_empty_and_length_one_batches(interpret, mode):
    for lengths in ([0], [0, 0, 0], [1], [1, 0, 1]):
        inputs, kwargs = make(mode, lengths, heads=1, dh=5, f=3, seeds=1)
        out = check(inputs, dict(kwargs, activation="gelu_tanh"))
        if mode == "seed":
            assert out.shape == (len(lengths), 1, 1, 5)
            for b, n in enumerate(lengths):
                if n == 0:
                    assert torch.count_nonzero(out[b]) == 0


def test_larger_head_dim_and_blocks(interpret):
    # several q and k blocks per sample, d_h = 33 pads to 64
    inputs, kwargs = make("pffn", [40], heads=1, dh=33, f=35, seed=4)
    check(inputs, dict(kwargs, activation="gelu"))


def test_mixed_input_dtypes_are_promoted(interpret):
    (q, k, v), kwargs = make("pffn", [3, 5], heads=1, dh=6, f=4, seed=8)
    out = gdpa(q.half(), k, v, implementation="triton", activation="relu", **kwargs)
    assert out.dtype == torch.float32
    ref = gdpa(q.half().float(), k, v, implementation="torch", activation="relu", **kwargs)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_non_contiguous_inputs(interpret):
    (q, k, v), kwargs = make("pffn", [3, 5], heads=2, dh=6, f=4, seed=5)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not qt.is_contiguous()
    check((qt, k, v), dict(kwargs, activation="silu"))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(["pffn", "seed", "self"]),
       lengths=st.lists(st.integers(0, 20), min_size=1, max_size=3),
       heads=st.integers(1, 2), dh=st.integers(1, 17), f=st.integers(1, 20), seeds=st.integers(1, 18),
       activation=st.sampled_from(ACTIVATIONS), pre=st.booleans(),
       window=st.one_of(st.none(), st.integers(0, 6)))
def test_fuzz_against_reference(interpret, mode, lengths, heads, dh, f, seeds, activation, pre, window):
    inputs, kwargs = make(mode, lengths, heads, dh, f=f, seeds=seeds, seed=sum(lengths) + dh)
    kwargs = dict(kwargs, activation=activation, scale_position="pre" if pre else "post")
    if mode == "self":
        kwargs["window"] = window
    check(inputs, kwargs)


@pytest.mark.parametrize("mode", ["self", "seed"])
def test_custom_op_opcheck(interpret, mode):
    # schema, autograd registration, fake tensor and AOT-dispatch (dynamic shapes) checks
    (q, k, v), kwargs = make(mode, [3, 2], heads=1, dh=4, seeds=3, seed=6)
    if mode == "self":
        off = kwargs["q_offsets"]
        args = (off, off, [ACTIVATION_IDS["gelu"]], None, False, 1, False)
    else:
        args = (None, kwargs["kv_offsets"], [ACTIVATION_IDS["silu"]], 0.5, True, -1, True)
    leaves = tuple(t.requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.kunbench.gdpa_fwd.default, leaves + args)


@pytest.mark.parametrize("via", ["op", "gdpa"])
def test_torch_compile_fullgraph(interpret, via):
    # the custom op and the public wrapper (its data-dependent checks are skipped while tracing)
    # compile without graph breaks; forward and gradients match the reference
    (q, k, v), kwargs = make("self", [5, 0, 3], heads=2, dh=8, seed=7)
    off = kwargs["q_offsets"]
    acts = ["gelu", "silu"]

    def f(q, k, v, off):
        if via == "op":
            out = torch.ops.kunbench.gdpa_fwd(q, k, v, off, off, [ACTIVATION_IDS[a] for a in acts], None, False, 2,
                                              False)
        else:
            out = gdpa(q, k, v, q_offsets=off, kv_offsets=off, activation=acts, window=2, implementation="triton")
        return out.square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    loss = compiled(*leaves, off)
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = gdpa(*ref_leaves, q_offsets=off, kv_offsets=off, activation=acts, window=2,
               implementation="torch").square().sum()
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=RTOL)
    for a, b in zip(grads, torch.autograd.grad(ref, ref_leaves)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode, window", [("pffn", None), ("seed", None), ("self", None), ("self", 2)])
def test_flop_counter_sees_the_custom_op(interpret, mode, window):
    lengths, heads, dh, f, seeds = [3, 0, 7], 2, 4, 5, 6
    inputs, kwargs = make(mode, lengths, heads, dh, f=f, seeds=seeds)
    if window is not None:
        kwargs["window"] = window
    leaves = [t.requires_grad_() for t in inputs]
    lq = torch.full((3,), seeds) if mode == "seed" else torch.tensor(lengths)
    lk = torch.full((3,), f) if mode == "pffn" else torch.tensor(lengths)
    expected = float(gdpa_flops(lq, lk, heads, dh, window=window).sum())
    with FlopCounterMode(display=False) as counter:
        out = gdpa(*leaves, implementation="triton", **kwargs)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-6)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == pytest.approx(2.5 * expected, rel=1e-6)


def test_dispatcher_rules(monkeypatch):
    monkeypatch.delenv("KUNBENCH_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert select_implementation("cpu") == "torch"
    assert select_implementation("cuda") == "triton"
    assert select_implementation("cuda", dtype=torch.float64) == "torch"
    assert select_implementation("cuda", "torch") == "torch"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        select_implementation("cpu", "triton")
    monkeypatch.setenv("KUNBENCH_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="CUDA"):
        gdpa(torch.randn(2, 1, 4), torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4), q_offsets=offsets_of([2]))
    assert select_implementation("cpu", "torch") == "torch"  # the argument wins over the variable
    monkeypatch.setenv("KUNBENCH_KERNELS", "cutlass")
    with pytest.raises(ValueError, match="cutlass"):
        select_implementation("cuda")
    monkeypatch.setenv("KUNBENCH_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_implementation("cpu") == "triton"
    with pytest.raises(TypeError, match="float64"):
        select_implementation("cpu", dtype=torch.float64)


def test_interpreter_does_not_leak():
    # the kernels exist in both flavours side by side, whatever the environment says now
    assert os.environ.get("TRITON_INTERPRET", "0") in ("0", "")  # the fixture did not leak
    interp = gdpa_triton.kernel_module(True).gdpa_fwd_kernel
    compiled = gdpa_triton.kernel_module(False).gdpa_fwd_kernel
    assert type(interp).__name__ == "InterpretedFunction"
    assert type(compiled).__name__ == "JITFunction"
    assert os.environ.get("TRITON_INTERPRET", "0") in ("0", "")


def test_kernels_use_only_builtin_triton_language_calls():
    # triton.language's own @jit helpers (tl.zeros, tl.cdiv, tl.sigmoid, ...) are interpreted only
    # when triton itself was imported under TRITON_INTERPRET=1; builtins work either way.
    import re

    import triton.language as tl

    src = open(gdpa_triton.kernel_module(False).__file__).read()
    for name in sorted(set(re.findall(r"\btl\.([a-z_]+(?:\.[a-z_]+)?)\(", src))):
        obj = tl
        for part in name.split("."):
            obj = getattr(obj, part)
        assert tl.core.is_builtin(obj), f"tl.{name} is not a builtin"


@pytest.mark.parametrize("kernel, consts", [
    ("gdpa_fwd_kernel", dict(ACT=2, BROADCAST_Q=False, JAGGED_KV=False, HAS_WINDOW=False, PADDED=False)),
    ("gdpa_fwd_kernel", dict(ACT=4, BROADCAST_Q=False, JAGGED_KV=True, HAS_WINDOW=True, PADDED=True)),
    ("gdpa_bwd_dq_kernel", dict(ACT=3, BROADCAST_Q=True, JAGGED_KV=True, HAS_WINDOW=False, PADDED=True)),
    ("gdpa_bwd_dkdv_kernel", dict(ACT=4, BROADCAST_Q=False, JAGGED_KV=True, HAS_WINDOW=True, PADDED=False)),
])
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_kernels_compile_for_sm90_without_a_gpu(monkeypatch, kernel, consts):
    # The interpreter accepts things the compiler rejects: compile (Triton's full pipeline down to
    # a cubin, with its bundled ptxas) for an H100 target, no GPU needed.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this triton has no ASTSource/GPUTarget")
    fn = getattr(gdpa_triton.kernel_module(False), kernel)
    consts = dict(consts, BLOCK_M=64, BLOCK_N=64, BLOCK_D=128)
    ptrs = {n: "*bf16" for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")} | {
        "QOFF": "*i64", "KOFF": "*i64", "HEADS": "*i32"}
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n.startswith("scale") else "i32")
           for n in fn.arg_names}
    try:
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    except TypeError:
        pytest.skip("this triton's ASTSource signature differs (AOT check written for triton >= 3.3)")
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3))
    except RuntimeError as exc:
        if "ptxas" in str(exc).lower() and "not found" in str(exc).lower():
            pytest.skip(f"no ptxas: {exc}")
        raise
    assert "wgmma" in compiled.asm["ptx"] or "mma" in compiled.asm["ptx"]  # tensor cores


# ---------------------------------------------------------------------------------------------
# GPU: bf16 kernels against a float32 reference. Tolerance: |err| <= 3e-2 * max|ref| + 2e-2 |ref|
# elementwise (bf16 keeps 8 mantissa bits; inputs, the activated scores fed to the second matmul and
# the stored outputs are rounded to bf16, accumulation is fp32).
# ---------------------------------------------------------------------------------------------

def _assert_bf16_close(got, want, name):
    want = want.float()
    err = (got.float() - want).abs()
    bound = 3e-2 * want.abs().max().clamp_min(1e-6) + 2e-2 * want.abs()
    assert bool((err <= bound).all()), f"{name}: max err {err.max():.3e}, max |ref| {want.abs().max():.3e}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode, window", [("pffn", None), ("seed", None), ("self", None), ("self", 16)])
@pytest.mark.parametrize("activation", ["gelu", "silu", "identity", "gelu_tanh", "relu"])
def test_cuda_bf16_against_fp32_reference(monkeypatch, mode, window, activation):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lengths = [0, 1, 77, 300, 129, 512]
    inputs, kwargs = make(mode, lengths, heads=4, dh=64, f=200, seeds=40, seed=11, device="cuda")
    inputs = [t / 2 for t in inputs]
    if window is not None:
        kwargs["window"] = window
    kwargs["activation"] = activation
    leaves = [t.to(torch.bfloat16).requires_grad_() for t in inputs]
    out = gdpa(*leaves, implementation="triton", **kwargs)
    ref_leaves = [t.to(torch.bfloat16).float().requires_grad_() for t in inputs]
    ref = gdpa(*ref_leaves, implementation="torch", **kwargs)
    assert out.dtype == torch.bfloat16
    _assert_bf16_close(out, ref, "out")
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, leaves, grad.to(torch.bfloat16))
    want = torch.autograd.grad(ref, ref_leaves, grad.to(torch.bfloat16).float())
    for name, a, b in zip("qkv", got, want):
        _assert_bf16_close(a, b, "d" + name)


@pytest.mark.parametrize("tuned", [False, True])
def test_launch_puts_samples_times_heads_on_the_unbounded_grid_axis(monkeypatch, tuned):
    """CUDA caps grid axes 1 and 2 at 65,535 programs: B x heads (which passes that at 32k rows and
    two heads) must be axis 0, the row blocks axis 1."""
    grids = []

    class Kernel:
        def __getitem__(self, grid):
            grids.append(grid(dict(BLOCK_M=16, BLOCK_N=16)) if callable(grid) else grid)
            return lambda *args, **kwargs: None

    monkeypatch.setattr(gdpa_triton, "_kernel", lambda name, interpret: (Kernel(), tuned))
    gdpa_triton._launch("gdpa_fwd_kernel", 100, 70_000, "BLOCK_M", (), {})
    (grid,) = grids
    assert grid[0] == 70_000 and 1 <= grid[1] <= 7  # 100 rows in blocks of 16 or more
