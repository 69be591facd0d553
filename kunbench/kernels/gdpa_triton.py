"""Host side of the Triton GDPA kernels: kernel loading (compiled or interpreted), autotuning on
GPU with bucketed keys, launches for forward and backward.

The interpreter is chosen per call from TRITON_INTERPRET (read at call time, not import time):
`triton.jit` decides at decoration time whether a function is interpreted, so the kernel source
module is loaded a second time, under its own name, with TRITON_INTERPRET=1 set only while it is
being imported. The compiled and the interpreted kernels therefore live side by side and setting
the variable in one test never changes what another test's kernels are.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
from types import ModuleType

import torch

from kunbench.ops.jagged import lengths_of

_KERNEL_MODULE = "kunbench.kernels.gdpa_triton_kernels"
_INTERPRETED_NAME = "kunbench.kernels._gdpa_triton_kernels_interpreted"
_lock = threading.Lock()
_modules: dict[bool, ModuleType] = {}
_autotuned: dict[str, object] = {}

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The single config of the interpreter (small: every program runs in Python), and the one used on a
# GPU when autotuning is off (KUNBENCH_TRITON_AUTOTUNE=0).
INTERPRET_BLOCKS = dict(BLOCK_M=16, BLOCK_N=16)
UNTUNED_GPU_BLOCKS = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)


_TRITON_FOUND: dict[str, bool] = {}  # the import is tried once (a failed import searches the disk)


def triton_available() -> bool:
    if "found" not in _TRITON_FOUND:
        try:
            import triton  # noqa: F401
            _TRITON_FOUND["found"] = True
        except Exception:  # pragma: no cover - platforms without triton
            _TRITON_FOUND["found"] = False
    return _TRITON_FOUND["found"]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@contextlib.contextmanager
def _env(key: str, value: str):
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def kernel_module(interpret: bool) -> ModuleType:
    """The kernel source module, with compiled (`interpret=False`) or interpreted kernels."""
    with _lock:
        mod = _modules.get(interpret)
        if mod is not None:
            return mod
        if not interpret:
            with _env("TRITON_INTERPRET", "0"):
                if _KERNEL_MODULE in sys.modules:
                    mod = sys.modules[_KERNEL_MODULE]
                else:
                    mod = importlib.import_module(_KERNEL_MODULE)
        else:
            spec = importlib.util.find_spec(_KERNEL_MODULE)
            mod = importlib.util.module_from_spec(importlib.util.spec_from_file_location(_INTERPRETED_NAME, spec.origin))
            with _env("TRITON_INTERPRET", "1"):
                mod.__spec__.loader.exec_module(mod)
            sys.modules[_INTERPRETED_NAME] = mod
        _modules[interpret] = mod
        return mod


def _bucket(n: int) -> int:
    """Next power of two (min 16): jagged max lengths inside one bucket share a tuned config."""
    p = 16
    while p < n:
        p *= 2
    return p


def _configs(kind: str):
    import triton

    if kind == "fwd":
        shapes = [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 4, 4), (64, 128, 4, 3),
                  (128, 32, 4, 4), (64, 32, 4, 4), (32, 32, 4, 2)]
    else:  # bwd kernels: (BLOCK_M, BLOCK_N) = (q rows per step or per program, k rows)
        shapes = [(64, 64, 4, 3), (32, 64, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3), (32, 128, 4, 3),
                  (64, 32, 4, 3), (128, 128, 8, 2), (32, 32, 4, 2)]
    # the last, small-footprint entries keep float32 and d_h = 256 inside shared memory when the
    # larger tiles fail with OutOfResources (the autotuner skips those)
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


_KEYS = ["LQ_BUCKET", "LK_BUCKET", "D", "ACT", "BROADCAST_Q", "JAGGED_KV", "HAS_WINDOW"]


def _kernel(name: str, interpret: bool):
    mod = kernel_module(interpret)
    raw = getattr(mod, name)
    if interpret or os.environ.get("KUNBENCH_TRITON_AUTOTUNE", "1") == "0":
        return raw, False
    with _lock:
        tuned = _autotuned.get(name)
        if tuned is None:
            import triton

            tuned = triton.autotune(configs=_configs("fwd" if name == "gdpa_fwd_kernel" else "bwd"), key=_KEYS)(raw)
            _autotuned[name] = tuned
    return tuned, True


def _launch(name: str, grid_rows: int, grid_bh: int, tile: str, args: tuple, consts: dict) -> None:
    """Launch kernel `name` over (B * heads-in-group, row blocks); `tile` names the block along rows."""
    interpret = interpreting()
    kern, tuned = _kernel(name, interpret)
    if grid_rows == 0 or grid_bh == 0:
        return
    # (B * heads, row blocks): axis 0 takes up to 2^31 - 1 programs, axis 1 only 65,535
    if tuned:
        grid = lambda meta: (grid_bh, triton_cdiv(grid_rows, meta[tile]))  # noqa: E731
        kern[grid](*args, **consts)
    else:
        blocks = dict(INTERPRET_BLOCKS if interpret else UNTUNED_GPU_BLOCKS)
        grid = (grid_bh, triton_cdiv(grid_rows, blocks[tile]))
        kern[grid](*args, **consts, **blocks)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


class Problem:
    """Shapes and per-sample ranges of one GDPA call, shared by forward and backward launches."""

    def __init__(self, q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q,
                 padded: bool = False):
        if q.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"triton gdpa supports float16, bfloat16 and float32, got {q.dtype}")
        self.broadcast_q = bool(broadcast_q)
        self.jagged_kv = kv_offsets is not None
        self.padded = bool(padded)
        self.heads = q.shape[-2]
        self.d = q.shape[-1]
        dev = q.device
        empty = torch.zeros(1, dtype=torch.int64, device=dev)
        self.q_off = q_offsets.to(device=dev, dtype=torch.int64).contiguous() if not self.broadcast_q else empty
        self.kv_off = kv_offsets.to(device=dev, dtype=torch.int64).contiguous() if self.jagged_kv else empty
        if self.padded:  # q [B, Tq, H, d] (or broadcast [Lq, H, d]), k/v [B, Tk, H, d]; offsets are lengths
            self.batch = k.shape[0]
            self.nq = q.shape[0] if self.broadcast_q else q.shape[1]
            self.nk = k.shape[1]
            self.max_q, self.max_k = self.nq, self.nk  # static shapes: no device read
            self._finish(scale, scale_pre, window, activations, dev)
            return
        self.batch = (kv_offsets.numel() - 1) if self.jagged_kv else k.shape[0]
        self.nq = q.shape[0] if self.broadcast_q else 0
        self.nk = 0 if self.jagged_kv else k.shape[1]
        maxima = []
        if not self.broadcast_q:
            maxima.append(lengths_of(self.q_off).max() if self.batch else empty[0])
        if self.jagged_kv:
            maxima.append(lengths_of(self.kv_off).max() if self.batch else empty[0])
        got = torch.stack(maxima).tolist() if maxima else []  # one host sync for both maxima
        self.max_q = self.nq if self.broadcast_q else int(got.pop(0))
        self.max_k = int(got.pop(0)) if self.jagged_kv else self.nk
        self._finish(scale, scale_pre, window, activations, dev)

    def _finish(self, scale, scale_pre, window, activations, dev) -> None:
        s = (1.0 / max(self.max_q, 1)) if scale is None else float(scale)
        self.scale = s
        self.scale_in, self.scale_out = (s, 1.0) if scale_pre else (1.0, s)
        self.window = -1 if window is None or window < 0 else int(window)
        self.groups = _head_groups(tuple(int(a) for a in activations), dev)
        self.block_d = max(16, 1 << max(self.d - 1, 0).bit_length())

    def consts(self, act: int) -> dict:
        return dict(ACT=act, BROADCAST_Q=self.broadcast_q, JAGGED_KV=self.jagged_kv, HAS_WINDOW=self.window >= 0,
                    PADDED=self.padded, BLOCK_D=self.block_d)

    def common(self, nh: int) -> tuple:
        return (nh, self.nq, self.nk, self.d, self.scale_in, self.scale_out, max(self.window, 0),
                _bucket(self.max_q), _bucket(self.max_k))


_head_cache: dict[tuple, list] = {}


def _head_groups(activations: tuple[int, ...], device: torch.device) -> list[tuple[int, torch.Tensor]]:
    """[(activation id, int32 tensor of the heads using it)], cached (no host-to-device copy per call)."""
    key = (activations, str(device))
    got = _head_cache.get(key)
    if got is None:
        groups: dict[int, list[int]] = {}
        for h, a in enumerate(activations):
            groups.setdefault(a, []).append(h)
        got = [(a, torch.tensor(hs, dtype=torch.int32, device=device)) for a, hs in groups.items()]
        if len(_head_cache) < 256:
            _head_cache[key] = got
    return got


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., H, d] contiguous viewed as rows [N, H, d]."""
    return t.reshape(-1, t.shape[-2], t.shape[-1])


def _strides(t: torch.Tensor) -> tuple[int, int]:
    return t.stride(0), t.stride(1)


def gdpa_triton_forward(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q,
                        padded: bool = False):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    pb = Problem(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q, padded)
    if pb.broadcast_q:
        out = q.new_empty((pb.batch, pb.nq, pb.heads, pb.d))
    elif padded:  # rows past a sample's length are never stored: they stay zero
        out = torch.zeros_like(q)
    else:
        out = torch.empty_like(q)
    qr, kr, vr, orow = _rows(q), _rows(k), _rows(v), _rows(out)
    for act, heads in pb.groups:
        nh = heads.numel()
        args = (qr, kr, vr, orow, pb.q_off, pb.kv_off, heads, *_strides(qr), *_strides(kr), *_strides(vr),
                *_strides(orow), *pb.common(nh))
        _launch("gdpa_fwd_kernel", pb.max_q, pb.batch * nh, "BLOCK_M", args, pb.consts(act))
    return out


def gdpa_triton_backward(grad_out, q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window,
                         broadcast_q, padded: bool = False):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    grad_out = grad_out.contiguous().to(q.dtype)
    pb = Problem(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q, padded)
    alloc = torch.zeros_like if padded else torch.empty_like  # padded rows are never stored
    dk, dv = alloc(k), alloc(v)
    if pb.broadcast_q:  # per-sample partial dQ, summed over the batch below
        dq_buf = torch.empty((pb.batch, pb.nq, pb.heads, pb.d), dtype=torch.float32, device=q.device)
    else:
        dq_buf = alloc(q)
    qr, kr, vr, dor = _rows(q), _rows(k), _rows(v), _rows(grad_out)
    dqr, dkr, dvr = _rows(dq_buf), _rows(dk), _rows(dv)
    for act, heads in pb.groups:
        nh = heads.numel()
        base = (*_strides(qr), *_strides(kr), *_strides(vr), *_strides(dor))
        args = (qr, kr, vr, dor, dqr, pb.q_off, pb.kv_off, heads, *base, *_strides(dqr), *pb.common(nh))
        _launch("gdpa_bwd_dq_kernel", pb.max_q, pb.batch * nh, "BLOCK_M", args, pb.consts(act))
        args = (qr, kr, vr, dor, dkr, dvr, pb.q_off, pb.kv_off, heads, *base, *_strides(dkr), *_strides(dvr),
                *pb.common(nh))
        _launch("gdpa_bwd_dkdv_kernel", pb.max_k, pb.batch * nh, "BLOCK_N", args, pb.consts(act))
    if pb.broadcast_q:
        dq = dq_buf.sum(0).to(q.dtype) if pb.batch else torch.zeros_like(q)
    else:
        dq = dq_buf
    return dq, dk, dv
