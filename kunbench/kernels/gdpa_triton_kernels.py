"""Triton kernels for GDPA (docs/models.md 3.2): act(Q K^T) * s @ V, no softmax.

Only long-standing `triton.language` APIs are used (masked pointer arithmetic, tl.dot, tl.trans,
tl.exp, tl.math.erf, tl.where), no block pointers and no inline asm, so the same source runs under
the Triton interpreter (TRITON_INTERPRET=1, CPU) and compiles on older Triton 3.x releases.

This module is imported twice by `gdpa_triton.kernel_module`: once normally (compiled kernels) and,
when asked, a second time under another module name while TRITON_INTERPRET=1 is set, because
`triton.jit` decides at decoration time whether a function is interpreted. Nothing here reads the
environment.

One kernel serves the three modes through constexpr flags:
  BROADCAST_Q  q is one [NQ, H, d] set shared by the batch, output rows b * NQ + i;
               otherwise q is jagged by QOFF and the output shares q's rows.
  JAGGED_KV    k/v jagged by KOFF; otherwise dense per sample, rows b * NK + j.
  HAS_WINDOW   keep |i - j| <= window (positions inside the sample).
  PADDED       q (unless broadcast) and jagged k/v sit in padded [B, T, H, d] tensors: sample b
               starts at row b * NQ (b * NK) and QOFF / KOFF hold the [B] lengths instead of
               offsets, so the host never reads a length (no device sync).
Rows beyond a sequence load as zeros; every activation maps 0 to 0 and zero q/k/v/dO rows add
nothing to any product, so only the window needs an explicit mask on the score tile.
Activations: 0 identity, 1 relu, 2 gelu (erf), 3 gelu_tanh, 4 silu (a constexpr per launch; mixed
heads are launched as one group per activation through the HEADS index table).
The three kernels share their addressing through small @triton.jit helpers (`_program`, `_tile`,
`_load_pair`, `_weights_and_grad`, `_span`, `_windowed`), which Triton inlines into each kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

ACT_IDS = {"identity": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 1:
        y = tl.maximum(x, 0.0)
    elif ACT == 2:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 3:
        # 0.5 x (1 + tanh(u)) == x * sigmoid(2u): no tanh needed; exponents clamped (no overflow)
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        y = x / (1.0 + tl.exp(tl.minimum(-2.0 * u, 80.0)))
    elif ACT == 4:
        y = x / (1.0 + tl.exp(tl.minimum(-x, 80.0)))
    else:
        y = x
    return y


@triton.jit
def _act_and_grad(x, ACT: tl.constexpr):
    if ACT == 1:
        y = tl.maximum(x, 0.0)
        dy = tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        y = x * cdf
        dy = cdf + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    elif ACT == 3:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        sig = 1.0 / (1.0 + tl.exp(tl.minimum(-2.0 * u, 80.0)))
        y = x * sig
        dy = sig + x * sig * (1.0 - sig) * 2.0 * 0.7978845608028654 * (1.0 + 0.134145 * x * x)
    elif ACT == 4:
        sig = 1.0 / (1.0 + tl.exp(tl.minimum(-x, 80.0)))
        y = x * sig
        dy = sig * (1.0 + x * (1.0 - sig))
    else:
        y = x
        dy = x * 0.0 + 1.0
    return y, dy


@triton.jit
def _program(QOFF, KOFF, HEADS, NH, NQ, NK, BLOCK: tl.constexpr, BROADCAST_Q: tl.constexpr,
             JAGGED_KV: tl.constexpr, PADDED: tl.constexpr):
    """(first row of this program's block, its BLOCK rows, head, q row start, q length, output/dO
    row start, k row start, k length): grid axis 0 walks (sample, head in the group), axis 1 the
    row blocks (of q or of k). Samples x heads go on axis 0 because CUDA caps axes 1 and 2 at
    65,535 programs, which a batch of 32k rows with two heads would pass."""
    start = tl.program_id(1) * BLOCK
    pid_bh = tl.program_id(0)
    b = pid_bh // NH
    h = tl.load(HEADS + pid_bh % NH).to(tl.int64)
    b64 = b.to(tl.int64)
    if BROADCAST_Q:
        q_start = b64 * 0
        q_len = b * 0 + NQ
        o_start = b64 * NQ
    elif PADDED:
        q_start = b64 * NQ
        q_len = tl.load(QOFF + b).to(tl.int32)
        o_start = q_start
    else:
        q_start = tl.load(QOFF + b).to(tl.int64)
        q_len = (tl.load(QOFF + b + 1) - q_start).to(tl.int32)
        o_start = q_start
    if JAGGED_KV and PADDED:
        k_start = b64 * NK
        k_len = tl.load(KOFF + b).to(tl.int32)
    elif JAGGED_KV:
        k_start = tl.load(KOFF + b).to(tl.int64)
        k_len = (tl.load(KOFF + b + 1) - k_start).to(tl.int32)
    else:
        k_start = b64 * NK
        k_len = b * 0 + NK
    return start, start + tl.arange(0, BLOCK), h, q_start, q_len, o_start, k_start, k_len


@triton.jit
def _weights_and_grad(a, b, da, db, scale_in, scale_out, ACT: tl.constexpr):
    """The weights `act(a b^T s_in) s_out` and the score gradient `(da db^T) act'(a b^T s_in) s_in s_out`
    of one tile: (a, b, da, db) = (q, k, dO, v) for dQ, or (k, q, v, dO) for the transposed dK/dV tile."""
    p, dact = _act_and_grad(tl.dot(a, tl.trans(b)) * scale_in, ACT)
    ds = tl.dot(da, tl.trans(db)) * dact * (scale_in * scale_out)
    return p * scale_out, ds


@triton.jit
def _tile(PTR, rows, stride_n, h, stride_h, offs_d):
    """Pointers of a [rows, d] tile of head h in a row-major [N, H, d] tensor."""
    return PTR + rows[:, None] * stride_n + h * stride_h + offs_d[None, :]


@triton.jit
def _load_pair(A, B, a_start, b_start, offs, length, stride_an, stride_ah, stride_bn, stride_bh, h, offs_d, D):
    """Head h of rows `offs` of two row-major [N, H, d] tensors that share their row index (q and dO,
    or k and v), rows past `length` and columns past D read as 0; and that [rows, d] mask."""
    mask = (offs < length)[:, None] & (offs_d < D)[None, :]
    a = tl.load(_tile(A, a_start + offs, stride_an, h, stride_ah, offs_d), mask=mask, other=0.0)
    b = tl.load(_tile(B, b_start + offs, stride_bn, h, stride_bh, offs_d), mask=mask, other=0.0)
    return a, b, mask


@triton.jit
def _span(start, BLOCK: tl.constexpr, own_len, other_len, window, HAS_WINDOW: tl.constexpr):
    """[lo, hi) of the other side's rows that the block of rows start .. start + BLOCK - 1 meets
    (within the window when there is one); empty for a block past its sample's end."""
    lo = start * 0
    hi = other_len
    if HAS_WINDOW:
        lo = tl.maximum(start - window, 0)
        hi = tl.minimum(start + BLOCK + window, other_len)
    hi = tl.where(start < own_len, hi, lo)
    return lo, hi


@triton.jit
def _windowed(x, rows, cols, window, HAS_WINDOW: tl.constexpr):
    """The [rows, cols] tile `x` with 0 where |row - col| > window (unchanged without a window)."""
    if HAS_WINDOW:
        diff = rows[:, None] - cols[None, :]
        x = tl.where((diff <= window) & (diff >= -window), x, 0.0)
    return x


@triton.jit
def gdpa_fwd_kernel(
    Q, K, V, O, QOFF, KOFF, HEADS,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    NH, NQ, NK, D, scale_in, scale_out, window,
    LQ_BUCKET, LK_BUCKET,  # autotune keys only
    ACT: tl.constexpr, BROADCAST_Q: tl.constexpr, JAGGED_KV: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PADDED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    m_start, offs_m, h, q_start, q_len, o_start, k_start, k_len = _program(QOFF, KOFF, HEADS, NH, NQ, NK, BLOCK_M,
                                                                         BROADCAST_Q, JAGGED_KV, PADDED)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    md_mask = (offs_m < q_len)[:, None] & (offs_d < D)[None, :]
    q = tl.load(_tile(Q, q_start + offs_m, stride_qn, h, stride_qh, offs_d), mask=md_mask, other=0.0)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    lo, hi = _span(m_start, BLOCK_M, q_len, k_len, window, HAS_WINDOW)
    for n0 in range(lo, hi, BLOCK_N):
        offs_k = n0 + offs_n
        k, v, _ = _load_pair(K, V, k_start, k_start, offs_k, k_len, stride_kn, stride_kh, stride_vn, stride_vh, h,
                             offs_d, D)
        p = _windowed(_act(tl.dot(q, tl.trans(k)) * scale_in, ACT) * scale_out, offs_m, offs_k, window, HAS_WINDOW)
        acc += tl.dot(p.to(v.dtype), v)
    tl.store(_tile(O, o_start + offs_m, stride_on, h, stride_oh, offs_d), acc.to(O.dtype.element_ty), mask=md_mask)


@triton.jit
def gdpa_bwd_dq_kernel(
    Q, K, V, DO, DQ, QOFF, KOFF, HEADS,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    stride_dqn, stride_dqh,
    NH, NQ, NK, D, scale_in, scale_out, window,
    LQ_BUCKET, LK_BUCKET,
    ACT: tl.constexpr, BROADCAST_Q: tl.constexpr, JAGGED_KV: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PADDED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dQ for one (q block, sample, head). With BROADCAST_Q, DQ is a [B * NQ] partial buffer
    (row b * NQ + i) that the host sums over the batch."""
    m_start, offs_m, h, q_start, q_len, o_start, k_start, k_len = _program(QOFF, KOFF, HEADS, NH, NQ, NK, BLOCK_M,
                                                                         BROADCAST_Q, JAGGED_KV, PADDED)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q, do, md_mask = _load_pair(Q, DO, q_start, o_start, offs_m, q_len, stride_qn, stride_qh, stride_on, stride_oh, h,
                                offs_d, D)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    lo, hi = _span(m_start, BLOCK_M, q_len, k_len, window, HAS_WINDOW)
    for n0 in range(lo, hi, BLOCK_N):
        offs_k = n0 + offs_n
        k, v, _ = _load_pair(K, V, k_start, k_start, offs_k, k_len, stride_kn, stride_kh, stride_vn, stride_vh, h,
                             offs_d, D)
        _, ds = _weights_and_grad(q, k, do, v, scale_in, scale_out, ACT)
        ds = _windowed(ds, offs_m, offs_k, window, HAS_WINDOW)
        acc += tl.dot(ds.to(k.dtype), k)
    if BROADCAST_Q:
        dq_start = o_start
    else:
        dq_start = q_start
    tl.store(_tile(DQ, dq_start + offs_m, stride_dqn, h, stride_dqh, offs_d), acc.to(DQ.dtype.element_ty),
             mask=md_mask)


@triton.jit
def gdpa_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, QOFF, KOFF, HEADS,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    stride_dkn, stride_dkh, stride_dvn, stride_dvh,
    NH, NQ, NK, D, scale_in, scale_out, window,
    LQ_BUCKET, LK_BUCKET,
    ACT: tl.constexpr, BROADCAST_Q: tl.constexpr, JAGGED_KV: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PADDED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dK, dV for one (k block, sample, head), accumulated over that sample's q rows; one program
    owns its tile (dense PFFN K/V included), so no atomics."""
    n_start, offs_k, h, q_start, q_len, o_start, k_start, k_len = _program(QOFF, KOFF, HEADS, NH, NQ, NK, BLOCK_N,
                                                                         BROADCAST_Q, JAGGED_KV, PADDED)
    offs_mb = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k, v, kv_mask = _load_pair(K, V, k_start, k_start, offs_k, k_len, stride_kn, stride_kh, stride_vn, stride_vh, h,
                               offs_d, D)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)

    lo, hi = _span(n_start, BLOCK_N, k_len, q_len, window, HAS_WINDOW)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + offs_mb
        q, do, _ = _load_pair(Q, DO, q_start, o_start, offs_m, q_len, stride_qn, stride_qh, stride_on, stride_oh, h,
                              offs_d, D)
        pt, dst = _weights_and_grad(k, q, v, do, scale_in, scale_out, ACT)  # [BLOCK_N, BLOCK_M]: (Q K^T)^T
        pt = _windowed(pt, offs_k, offs_m, window, HAS_WINDOW)  # |i - j| is symmetric
        dst = _windowed(dst, offs_k, offs_m, window, HAS_WINDOW)
        dv += tl.dot(pt.to(do.dtype), do)
        dk += tl.dot(dst.to(q.dtype), q)
    tl.store(_tile(DK, k_start + offs_k, stride_dkn, h, stride_dkh, offs_d), dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(_tile(DV, k_start + offs_k, stride_dvn, h, stride_dvh, offs_d), dv.to(DV.dtype.element_ty), mask=kv_mask)
