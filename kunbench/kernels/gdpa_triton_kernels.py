"""Triton kernels for GDPA (models.md 3.2): act(Q K^T) * s @ V, no softmax.

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
def _sample_ranges(b, QOFF, KOFF, NQ, NK, BROADCAST_Q: tl.constexpr, JAGGED_KV: tl.constexpr,
                   PADDED: tl.constexpr):
    """(q row start, q length, output/dO row start, k row start, k length) of sample b."""
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
    return q_start, q_len, o_start, k_start, k_len


@triton.jit
def gdpa_fwd_kernel(
    Q, K, V, O, QOFF, KOFF, HEADS,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    NH, NQ, NK, D, scale_in, scale_out, window,
    LQ_BUCKET, LK_BUCKET,  # autotune keys only
    ACT: tl.constexpr, BROADCAST_Q: tl.constexpr, JAGGED_KV: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PADDED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = tl.load(HEADS + pid_bh % NH).to(tl.int64)
    q_start, q_len, o_start, k_start, k_len = _sample_ranges(b, QOFF, KOFF, NQ, NK, BROADCAST_Q, JAGGED_KV, PADDED)

    m_start = pid_m * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < D
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    lo = m_start * 0
    hi = k_len
    if HAS_WINDOW:
        lo = tl.maximum(m_start - window, 0)
        hi = tl.minimum(m_start + BLOCK_M + window, k_len)
    hi = tl.where(m_start < q_len, hi, lo)  # a block past this sample's end does no work
    for n0 in range(lo, hi, BLOCK_N):
        offs_k = n0 + offs_n
        n_mask = offs_k < k_len
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(K + (k_start + offs_k)[:, None] * stride_kn + h * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(V + (k_start + offs_k)[:, None] * stride_vn + h * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k))
        p = _act(s * scale_in, ACT) * scale_out
        if HAS_WINDOW:
            diff = offs_m[:, None] - offs_k[None, :]
            p = tl.where((diff <= window) & (diff >= -window), p, 0.0)
        acc += tl.dot(p.to(v.dtype), v)
    tl.store(O + (o_start + offs_m)[:, None] * stride_on + h * stride_oh + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


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
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = tl.load(HEADS + pid_bh % NH).to(tl.int64)
    q_start, q_len, o_start, k_start, k_len = _sample_ranges(b, QOFF, KOFF, NQ, NK, BROADCAST_Q, JAGGED_KV, PADDED)

    m_start = pid_m * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < D
    md_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                mask=md_mask, other=0.0)
    do = tl.load(DO + (o_start + offs_m)[:, None] * stride_on + h * stride_oh + offs_d[None, :],
                 mask=md_mask, other=0.0)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    ds_scale = scale_in * scale_out

    lo = m_start * 0
    hi = k_len
    if HAS_WINDOW:
        lo = tl.maximum(m_start - window, 0)
        hi = tl.minimum(m_start + BLOCK_M + window, k_len)
    hi = tl.where(m_start < q_len, hi, lo)
    for n0 in range(lo, hi, BLOCK_N):
        offs_k = n0 + offs_n
        n_mask = offs_k < k_len
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(K + (k_start + offs_k)[:, None] * stride_kn + h * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(V + (k_start + offs_k)[:, None] * stride_vn + h * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k))
        _, dact = _act_and_grad(s * scale_in, ACT)
        dp = tl.dot(do, tl.trans(v))
        ds = dp * dact * ds_scale
        if HAS_WINDOW:
            diff = offs_m[:, None] - offs_k[None, :]
            ds = tl.where((diff <= window) & (diff >= -window), ds, 0.0)
        acc += tl.dot(ds.to(k.dtype), k)
    if BROADCAST_Q:
        dq_start = o_start
    else:
        dq_start = q_start
    tl.store(DQ + (dq_start + offs_m)[:, None] * stride_dqn + h * stride_dqh + offs_d[None, :],
             acc.to(DQ.dtype.element_ty), mask=md_mask)


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
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = tl.load(HEADS + pid_bh % NH).to(tl.int64)
    q_start, q_len, o_start, k_start, k_len = _sample_ranges(b, QOFF, KOFF, NQ, NK, BROADCAST_Q, JAGGED_KV, PADDED)

    n_start = pid_n * BLOCK_N
    offs_k = n_start + tl.arange(0, BLOCK_N)
    offs_mb = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_k < k_len
    d_mask = offs_d < D
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(K + (k_start + offs_k)[:, None] * stride_kn + h * stride_kh + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(V + (k_start + offs_k)[:, None] * stride_vn + h * stride_vh + offs_d[None, :],
                mask=kv_mask, other=0.0)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    ds_scale = scale_in * scale_out

    lo = n_start * 0
    hi = q_len
    if HAS_WINDOW:
        lo = tl.maximum(n_start - window, 0)
        hi = tl.minimum(n_start + BLOCK_N + window, q_len)
    hi = tl.where(n_start < k_len, hi, lo)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + offs_mb
        md_mask = (offs_m < q_len)[:, None] & d_mask[None, :]
        q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                    mask=md_mask, other=0.0)
        do = tl.load(DO + (o_start + offs_m)[:, None] * stride_on + h * stride_oh + offs_d[None, :],
                     mask=md_mask, other=0.0)
        st = tl.dot(k, tl.trans(q))  # [BLOCK_N, BLOCK_M] = (Q K^T)^T
        pt, dact = _act_and_grad(st * scale_in, ACT)
        pt = pt * scale_out
        dpt = tl.dot(v, tl.trans(do))
        dst = dpt * dact * ds_scale
        if HAS_WINDOW:
            diff = offs_m[None, :] - offs_k[:, None]
            keep = (diff <= window) & (diff >= -window)
            pt = tl.where(keep, pt, 0.0)
            dst = tl.where(keep, dst, 0.0)
        dv += tl.dot(pt.to(do.dtype), do)
        dk += tl.dot(dst.to(q.dtype), q)
    tl.store(DK + (k_start + offs_k)[:, None] * stride_dkn + h * stride_dkh + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + (k_start + offs_k)[:, None] * stride_dvn + h * stride_dvh + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)
