"""Triton kernels for the span-based dynamic convolution, and the functions that launch them.

Notation: B batch, L sequence, A = query width, C = n * d value width, n heads, K taps, P = padding_l
(tap k of token t reads value t + k - P; (K - 1) // 2 centres the window, K - 1 is causal). The forward and window-backward kernels work on a tile of tokens and a group
of heads (all heads unless C is very wide: then a second grid axis splits them into groups of
at most 512 padded channels and the fused projection is computed per group).

Layouts inside the kernels
--------------------------
* Logits / probabilities of one token are held as ``[N_PAD, K_PAD]`` (heads x taps, both padded
  to powers of two); flattened, column ``j = h * K_PAD + k`` maps to the weight row ``h * K + k``.
  Padded columns are masked to probability 0, so they contribute nothing anywhere.
* Values / outputs of one token are held as ``[N_PAD, D_PAD]`` (channel ``h * d + j``), so a head
  size that is not a power of two (d = 3, 12, 48, ...) is padded and masked.

Kernels
-------
* ``_fwd_kernel``: per token tile, either the fused projection (``ca = query * key_conv``, then
  ``ca @ weight.T + bias`` with ``tl.dot``, the weight read once per program in A-chunks) or a
  load of given logits; softmax over K in fp32 per head; the weighted window sum over the values
  (K shifted tile loads, zero outside ``[0, L)`` and where ``padding_mask`` is False); writes the
  output in the input dtype and the probabilities (fp32) for the backward pass.
* ``_bwd_window_kernel``: per token tile, ``d_values`` as a *gather* (value position s collects
  ``p[s-k+P, k] * g[s-k+P]`` over the K taps -- no atomics) and
  ``d_logits = p * (dp - sum_k p * dp)`` with ``dp[t, k] = <g[t], v[t+k-P]>``.
* ``_bwd_proj_kernel`` (span op only): ``d_ca = d_logits @ W`` (tl.dot), ``d_query = d_ca * key_conv``,
  ``d_key_conv = d_ca * query``, and per-program fp32 partials of ``d_weight = d_logits^T ca`` and
  ``d_bias = sum_t d_logits``; the partials are summed afterwards by ``torch.sum`` over a fixed
  axis, so gradients are bitwise identical from run to run.

Save versus recompute: the forward saves the softmax probabilities ([B, L, n, K] fp32, 216 bytes
per token at base dims, about 9% of the forward's 2.3 KB). Recomputing them would need the
full A-reduction before any gradient can be formed, i.e. a second pass over query and key_conv
in the backward (1.5 KB per token at base, bf16) plus the projection again; saving is both
simpler and, by this byte count, cheaper. (Not yet measured on a GPU.) When no input needs a
gradient the probabilities are not written at all (``SAVE_PROBS=False``).

Launching: every launch goes through ``_launch``, under a device guard (the tensors' device, not
the current one). Per specialisation, decided once per process by compiling without launching:
whether ptxas's default register cap would spill (then ``maxnreg`` lifts it), and, for the
projection backward, how many programs the GPU holds at once (its grid). Tile sizes keep every
specialisation of the benchmark shapes and test extremes free of spills on sm_80 and sm_90;
``python -m benchmarks.triton_resources`` checks that ahead of time, without a GPU.

64-bit offsets: when any tensor spans more than 2^31 - 1 elements (``B * L * C > 2^31`` etc.)
the kernels are specialised with ``INT64=True`` and compute every offset in int64.
Non-contiguous inputs are read through their strides (no copies); outputs are contiguous.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Triton reads this once at import; the launch heuristics below follow the same switch.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_INT32_MAX = 2**31 - 1
# Left to itself, ptxas caps some 8-warp programs at 128 registers (two programs per SM) and
# spills a few bytes rather than use more; for those specialisations only, the launch lifts the
# cap to every register a thread can have (see _register_options).
_MAXNREG = 255


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _fwd_kernel(
    q_ptr, kc_ptr, w_ptr, bias_ptr, logits_ptr, v_ptr, mask_ptr, bounds_ptr, out_ptr, probs_ptr,
    L, A, C, H, D, T_TILES, N_TOK,
    s_qb, s_ql, s_qa, s_kb, s_kl, s_ka, s_wr, s_wa,
    s_gb, s_gl, s_gc, s_vb, s_vl, s_vc, s_mb, s_ml,
    K: tl.constexpr, P: tl.constexpr, FUSED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_BOUNDS: tl.constexpr, SAVE_PROBS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, N_PAD: tl.constexpr, K_PAD: tl.constexpr,
    D_PAD: tl.constexpr, INT64: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
):
    NKP: tl.constexpr = N_PAD * K_PAD
    # grid axis 0 runs over (batch, token tile) pairs: axis 1 is capped at 65535 by CUDA
    pid_t = tl.program_id(0) % T_TILES
    b = (tl.program_id(0) // T_TILES).to(tl.int64)  # batch offsets can exceed int32 long before in-row ones
    h0 = tl.program_id(1) * N_PAD  # first head of this program's head group
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    if INT64:
        offs_t = offs_t.to(tl.int64)
    t_ok = offs_t < L

    # flattened (head, tap) columns of the logits, and the weight row each one reads
    jj = tl.arange(0, NKP)
    hh = h0 + jj // K_PAD
    kk = jj % K_PAD
    col_ok = (hh < H) & (kk < K)
    wrow = hh * K + kk

    if FUSED:
        logits = tl.zeros([BLOCK_T, NKP], dtype=ACC)
        for a0 in range(0, A, BLOCK_A):
            offs_a = a0 + tl.arange(0, BLOCK_A)
            if INT64:
                offs_a = offs_a.to(tl.int64)
            a_ok = offs_a < A
            m2 = t_ok[:, None] & a_ok[None, :]
            q = tl.load(q_ptr + b * s_qb + offs_t[:, None] * s_ql + offs_a[None, :] * s_qa, mask=m2, other=0.0)
            kc = tl.load(kc_ptr + b * s_kb + offs_t[:, None] * s_kl + offs_a[None, :] * s_ka, mask=m2, other=0.0)
            # weight chunk as [BLOCK_A, NKP]: every program reads the whole weight exactly once
            wt = tl.load(w_ptr + wrow[None, :] * s_wr + offs_a[:, None] * s_wa,
                         mask=a_ok[:, None] & col_ok[None, :], other=0.0)
            # the product is formed in the accumulation type, then rounded to the input dtype so
            # the projection runs on tensor cores for fp16/bf16 (as F.linear would)
            ca = (q.to(ACC) * kc.to(ACC)).to(wt.dtype)
            logits = tl.dot(ca, wt, logits, input_precision=PREC, out_dtype=ACC)
        if HAS_BIAS:
            logits += tl.load(bias_ptr + wrow, mask=col_ok, other=0.0).to(ACC)[None, :]
    else:
        logits = tl.load(logits_ptr + b * s_gb + offs_t[:, None] * s_gl + wrow[None, :] * s_gc,
                         mask=t_ok[:, None] & col_ok[None, :], other=0.0).to(ACC)

    # softmax over the taps of each head; padded taps/heads get probability exactly 0
    h3 = h0 + tl.arange(0, N_PAD)[None, :, None]
    k3 = tl.arange(0, K_PAD)[None, None, :]
    valid3 = (h3 < H) & (k3 < K)
    x = tl.reshape(logits, (BLOCK_T, N_PAD, K_PAD))
    x = tl.where(valid3, x, float("-inf"))
    mx = tl.max(x, axis=2)
    # a padded head has no valid tap: keep its probabilities 0 (no inf - inf). A real head whose
    # logits are all -inf gets NaN, as torch.softmax gives.
    pad_head = (h0 + tl.arange(0, N_PAD))[None, :] >= H
    mx = tl.where(pad_head, 0.0, mx)
    e = tl.exp(x - mx[:, :, None])
    den = tl.sum(e, axis=2)
    den = tl.where(pad_head, 1.0, den)
    p = e / den[:, :, None]

    row = b * L + offs_t  # row of the contiguous outputs
    if SAVE_PROBS:
        tl.store(probs_ptr + row[:, None, None] * (H * K) + h3 * K + k3, p,
                 mask=t_ok[:, None, None] & valid3)
    if HAS_BOUNDS:  # packed sequences: each token's window stops at its own sequence's ends
        lo = tl.load(bounds_ptr + row, mask=t_ok, other=0)
        hi = tl.load(bounds_ptr + N_TOK + row, mask=t_ok, other=0)

    # weighted window sum; the K shifted value tiles overlap, so after the first the reloads
    # hit L1/L2 rather than DRAM
    c3 = h3 * D + tl.arange(0, D_PAD)[None, None, :]
    c_ok = (h3 < H) & (tl.arange(0, D_PAD)[None, None, :] < D)
    acc = tl.zeros([BLOCK_T, N_PAD, D_PAD], dtype=ACC)
    for k in range(K):
        src = offs_t + (k - P)
        s_ok = (src >= 0) & (src < L)
        if HAS_BOUNDS:
            s_ok = s_ok & (row + (k - P) >= lo) & (row + (k - P) < hi)
        if HAS_MASK:
            keep = tl.load(mask_ptr + b * s_mb + src * s_ml, mask=s_ok, other=0)
            s_ok = s_ok & (keep != 0)
        v = tl.load(v_ptr + b * s_vb + src[:, None, None] * s_vl + c3 * s_vc,
                    mask=s_ok[:, None, None] & c_ok, other=0.0).to(ACC)
        pk = tl.sum(tl.where(k3 == k, p, 0.0), axis=2)  # [BLOCK_T, N_PAD]: tap k of every head
        acc += pk[:, :, None] * v
    tl.store(out_ptr + row[:, None, None] * C + c3, acc.to(out_ptr.dtype.element_ty),
             mask=t_ok[:, None, None] & c_ok)


@triton.jit
def _bwd_window_kernel(
    g_ptr, v_ptr, probs_ptr, mask_ptr, bounds_ptr, dv_ptr, dl_ptr,
    L, C, H, D, T_TILES, N_TOK,
    s_gb, s_gl, s_gc, s_vb, s_vl, s_vc, s_mb, s_ml,
    K: tl.constexpr, P: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BOUNDS: tl.constexpr, BLOCK_T: tl.constexpr, N_PAD: tl.constexpr,
    K_PAD: tl.constexpr, D_PAD: tl.constexpr, INT64: tl.constexpr, ACC: tl.constexpr,
):
    pid_t = tl.program_id(0) % T_TILES
    b = (tl.program_id(0) // T_TILES).to(tl.int64)
    h0 = tl.program_id(1) * N_PAD  # first head of this program's head group
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    if INT64:
        offs_t = offs_t.to(tl.int64)
    t_ok = offs_t < L
    row = b * L + offs_t
    if HAS_BOUNDS:  # packed sequences: the token's own sequence, [lo, hi) in flattened rows
        lo = tl.load(bounds_ptr + row, mask=t_ok, other=0)
        hi = tl.load(bounds_ptr + N_TOK + row, mask=t_ok, other=0)

    h2 = h0 + tl.arange(0, N_PAD)[None, :]
    h3 = h0 + tl.arange(0, N_PAD)[None, :, None]
    k3 = tl.arange(0, K_PAD)[None, None, :]
    j3 = tl.arange(0, D_PAD)[None, None, :]
    valid3 = (h3 < H) & (k3 < K)
    c3 = h3 * D + j3
    c_ok = (h3 < H) & (j3 < D)

    # 1) d_logits. dp[t, h, k] = <g[t], v[t + k - P]> per head (v masked as in the forward);
    #    two separate tap loops keep fewer [BLOCK_T, heads, d] tiles live at once (registers)
    g = tl.load(g_ptr + b * s_gb + offs_t[:, None, None] * s_gl + c3 * s_gc,
                mask=t_ok[:, None, None] & c_ok, other=0.0).to(ACC)
    dp = tl.zeros([BLOCK_T, N_PAD, K_PAD], dtype=ACC)
    for k in range(K):
        src = offs_t + (k - P)
        s_ok = (src >= 0) & (src < L)
        if HAS_BOUNDS:
            s_ok = s_ok & (row + (k - P) >= lo) & (row + (k - P) < hi)
        if HAS_MASK:
            keep = tl.load(mask_ptr + b * s_mb + src * s_ml, mask=s_ok, other=0)
            s_ok = s_ok & (keep != 0)
        v = tl.load(v_ptr + b * s_vb + src[:, None, None] * s_vl + c3 * s_vc,
                    mask=s_ok[:, None, None] & c_ok, other=0.0).to(ACC)
        dpk = tl.sum(g * v, axis=2)
        dp = tl.where(k3 == k, dpk[:, :, None], dp)
    p = tl.load(probs_ptr + row[:, None, None] * (H * K) + h3 * K + k3,
                mask=t_ok[:, None, None] & valid3, other=0.0).to(ACC)
    dl = p * (dp - tl.sum(p * dp, axis=2)[:, :, None])  # softmax backward
    tl.store(dl_ptr + row[:, None, None] * (H * K) + h3 * K + k3, dl.to(dl_ptr.dtype.element_ty),
             mask=t_ok[:, None, None] & valid3)

    # 2) d_values as a gather: value s is read with tap k by token r = s - k + P
    dv = tl.zeros([BLOCK_T, N_PAD, D_PAD], dtype=ACC)
    for k in range(K):
        r = offs_t - (k - P)
        r_ok = (r >= 0) & (r < L)
        if HAS_BOUNDS:  # token r reads this value only from within the same sequence
            r_ok = r_ok & (row - (k - P) >= lo) & (row - (k - P) < hi)
        gr = tl.load(g_ptr + b * s_gb + r[:, None, None] * s_gl + c3 * s_gc,
                     mask=r_ok[:, None, None] & c_ok, other=0.0).to(ACC)
        pr = tl.load(probs_ptr + (b * L + r)[:, None] * (H * K) + h2 * K + k,
                     mask=r_ok[:, None] & (h2 < H), other=0.0).to(ACC)
        dv += pr[:, :, None] * gr
    if HAS_MASK:
        keep_t = tl.load(mask_ptr + b * s_mb + offs_t * s_ml, mask=t_ok, other=0)
        dv = tl.where((keep_t != 0)[:, None, None], dv, 0.0)
    tl.store(dv_ptr + row[:, None, None] * C + c3, dv.to(dv_ptr.dtype.element_ty),
             mask=t_ok[:, None, None] & c_ok)


@triton.jit
def _bwd_proj_kernel(
    dl_ptr, q_ptr, kc_ptr, w_ptr, dq_ptr, dkc_ptr, dw_part_ptr, db_part_ptr,
    M, L, A, H, TOK_PER_PROG,
    s_qb, s_ql, s_qa, s_kb, s_kl, s_ka, s_wr, s_wa,
    K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, N_PAD: tl.constexpr,
    K_PAD: tl.constexpr, INT64: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
):
    NKP: tl.constexpr = N_PAD * K_PAD
    pid_c = tl.program_id(0)  # which run of tokens
    pid_a = tl.program_id(1)  # which block of A
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    if INT64:
        offs_a = offs_a.to(tl.int64)
    a_ok = offs_a < A
    jj = tl.arange(0, NKP)
    hh = jj // K_PAD
    kk = jj % K_PAD
    col_ok = (hh < H) & (kk < K)
    wrow = hh * K + kk

    w = tl.load(w_ptr + wrow[:, None] * s_wr + offs_a[None, :] * s_wa,
                mask=col_ok[:, None] & a_ok[None, :], other=0.0)  # [NKP, BLOCK_A], read once
    dw = tl.zeros([NKP, BLOCK_A], dtype=ACC)
    db = tl.zeros([NKP], dtype=ACC)
    if INT64:
        start = pid_c.to(tl.int64) * TOK_PER_PROG
    else:
        start = pid_c * TOK_PER_PROG
    for i in range(0, TOK_PER_PROG, BLOCK_T):
        m = start + i + tl.arange(0, BLOCK_T)  # flattened token index b * L + t
        m_ok = m < M
        bb = m // L
        tt = m % L
        dl = tl.load(dl_ptr + m[:, None] * (H * K) + wrow[None, :],
                     mask=m_ok[:, None] & col_ok[None, :], other=0.0)  # [BLOCK_T, NKP] (ACC)
        m2 = m_ok[:, None] & a_ok[None, :]
        q = tl.load(q_ptr + bb[:, None] * s_qb + tt[:, None] * s_ql + offs_a[None, :] * s_qa,
                    mask=m2, other=0.0).to(ACC)
        kc = tl.load(kc_ptr + bb[:, None] * s_kb + tt[:, None] * s_kl + offs_a[None, :] * s_ka,
                     mask=m2, other=0.0).to(ACC)
        dl_in = dl.to(w.dtype)  # tensor-core operands for fp16/bf16; exact for fp32/fp64
        dca = tl.dot(dl_in, w, input_precision=PREC, out_dtype=ACC)  # [BLOCK_T, BLOCK_A]
        tl.store(dq_ptr + m[:, None] * A + offs_a[None, :], (dca * kc).to(dq_ptr.dtype.element_ty), mask=m2)
        tl.store(dkc_ptr + m[:, None] * A + offs_a[None, :], (dca * q).to(dkc_ptr.dtype.element_ty), mask=m2)
        ca = (q * kc).to(w.dtype)
        dw = tl.dot(tl.trans(dl_in), ca, dw, input_precision=PREC, out_dtype=ACC)
        db += tl.sum(dl, axis=0)
    # this program's partials; summed over programs afterwards in a fixed order
    part = pid_c.to(tl.int64) * (H * K)
    tl.store(dw_part_ptr + (part + wrow[:, None]) * A + offs_a[None, :], dw,
             mask=col_ok[:, None] & a_ok[None, :])
    if pid_a == 0:
        tl.store(db_part_ptr + part + wrow, db, mask=col_ok)


# ---------------------------------------------------------------------------------------------
# launch helpers
# ---------------------------------------------------------------------------------------------


def _pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def _floor_pow2(x: int) -> int:
    x = max(int(x), 1)
    return 1 << (x.bit_length() - 1)


def _acc_dtypes(dtype: torch.dtype):
    """(Triton accumulation type, torch dtype of probs/partials): fp64 stays fp64, else fp32."""
    if dtype == torch.float64:
        return tl.float64, torch.float64
    return tl.float32, torch.float32


def _matmul_allows_tf32() -> bool:
    """Whether torch lets fp32 matrix products use TF32, read through the API that is current.

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("ieee", "tf32", or "none" when
    neither it nor the global ``torch.backends.fp32_precision`` was set: exact). Once any code sets
    the new API (transformers' ``TrainingArguments(tf32=...)`` does), reading the legacy
    ``allow_tf32`` raises, so it is read only where the new API does not exist.
    """
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is None:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    return precision == "tf32"


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands: follow torch's matmul TF32 switch (off by default, so exact 'ieee')."""
    if dtype == torch.float32 and not INTERPRET and _matmul_allows_tf32():
        return "tf32"
    return "ieee"


def _check_interpretable(dtype: torch.dtype, device: torch.device) -> None:
    """The interpreter's bf16 ``tl.dot`` is wrong (relative errors of order 1): refuse, never guess."""
    if INTERPRET and device.type == "cpu" and dtype == torch.bfloat16:
        raise ValueError(
            "triton backend: bfloat16 is not supported under the Triton interpreter (TRITON_INTERPRET=1), "
            "whose bf16 tl.dot computes wrong results; use float32 or float16, or the 'native' or 'eager' "
            "backend on CPU"
        )


def _head_group_cap(d_pad: int) -> int:
    """Most heads one program handles: on a GPU at most 512 padded channels per token."""
    if INTERPRET:
        return 1 << 30  # all heads at once: fewer, larger programs
    return max(1, _floor_pow2(512 // d_pad))


def _head_pads(num_heads: int, kernel_size: int, head_size: int | None):
    """(N_PAD, K_PAD, D_PAD): heads per program (a power of two), padded taps, padded head size.

    ``head_size=None`` means all heads in one program (the projection-backward kernel).
    """
    d_pad = _pow2(head_size or 1)
    n_pad = _pow2(num_heads)
    if head_size is not None:
        # very wide C (e.g. d = 256 with many heads) is split over a grid axis of head groups so
        # the per-program [BLOCK_T, heads, d] tiles fit in registers
        n_pad = min(n_pad, _head_group_cap(d_pad))
    # tl.dot needs every dimension >= 16, so the flattened (head, tap) axis is at least 16 wide
    k_pad = max(_pow2(kernel_size), 16 // n_pad if n_pad < 16 else 1)
    return n_pad, k_pad, d_pad


def _span(t: torch.Tensor) -> int:
    """Largest element offset reachable in ``t`` through its strides, plus one."""
    if t.numel() == 0:
        return 0
    return 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))


def _needs_int64(*tensors) -> bool:
    return any(t is not None and _span(t) > _INT32_MAX for t in tensors)


def _mask_args(padding_mask, dummy):
    """(pointer tensor, stride_b, stride_l, has_mask). Bool is read as uint8 (same bytes, no copy)."""
    if padding_mask is None:
        return dummy, 0, 0, False
    m = padding_mask.view(torch.uint8)
    return m, m.stride(0), m.stride(1), True


def _token_tile(length: int, width: int, itemsize: int, min_tokens: int = 16) -> tuple[int, int]:
    """(BLOCK_T, num_warps) for the per-token-tile kernels.

    ``width`` is the widest per-token tile the kernel keeps live (padded channels, or the n*K
    logits); ``min_tokens`` is 16 where ``tl.dot`` needs it (the forward), less elsewhere.
    """
    if INTERPRET:
        # the interpreter pays per program, not per element: few, large tiles
        return max(16, min(64, _pow2(length))), 4
    # about 8K accumulator elements per program (4K for fp32 inputs, whose loaded tiles are twice
    # as large) keep every specialisation clear of register spills (benchmarks/triton_resources.py)
    budget = 8192 if itemsize <= 2 else 4096
    block_t = max(min_tokens, min(64, _floor_pow2(budget // width)))
    return block_t, (4 if block_t * width < 4096 else 8)


def _proj_block_a(a_dim: int, nkp: int, block_t: int) -> int:
    """A-chunk width for the projections: the [BLOCK_T, BLOCK_A] and [NKP, BLOCK_A] tiles stay small."""
    if INTERPRET:
        return max(16, _pow2(a_dim))
    return max(16, min(64, _pow2(a_dim), _floor_pow2(4096 // nkp), _floor_pow2(2048 // block_t)))


def _proj_config(tokens: int, a_dim: int, nkp: int, itemsize: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_A, num_warps) of the projection-backward kernel.

    Its live set is the [NKP, BLOCK_A] d_weight accumulator, the weight block, the [BLOCK_T, NKP]
    d_logits tile and two dot results: wide NKP (K = 31) takes 16-token tiles, and fp32 operands
    (no tensor cores with input_precision="ieee") the narrowest A block, to stay clear of
    register spills (checked for every specialisation by benchmarks/triton_resources.py).
    """
    if INTERPRET:
        block_t = max(16, min(64, _pow2(tokens)))
        return block_t, _proj_block_a(a_dim, nkp, block_t), 4
    block_t = max(16, min(32, _floor_pow2(4096 // nkp)))
    block_a = 16 if itemsize >= 4 else _proj_block_a(a_dim, nkp, block_t)
    return block_t, block_a, 8


def programs_per_sm(regs_per_thread: int, num_warps: int, shared_bytes: int, *, regs_per_sm: int = 65536,
                    max_threads_per_sm: int = 2048, shared_per_sm: int = 233472, max_blocks_per_sm: int = 32) -> int:
    """How many programs of a kernel fit on one SM at once (CUDA's occupancy rules, sm_80/sm_90).

    Registers are allocated per warp in units of 256; each resident block also reserves 1 KiB of
    shared memory. The defaults are sm_90's limits.
    """
    regs_per_warp = -(-max(regs_per_thread, 1) * 32 // 256) * 256
    by_regs = (regs_per_sm // regs_per_warp) // num_warps
    by_threads = max_threads_per_sm // (32 * num_warps)
    by_shared = shared_per_sm // (shared_bytes + 1024) if shared_bytes else max_blocks_per_sm
    return max(1, min(by_regs, by_threads, by_shared, max_blocks_per_sm))


def _specialisation(kernel, device: torch.device, args, meta) -> tuple:
    """What Triton compiles a launch for: constexprs and options, pointer dtypes and 16-byte
    alignment, integers equal to 1 or divisible by 16; with the kernel and the device."""
    hints = tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else (a == 1, a % 16 == 0)
                  for a in args)
    return (kernel, device, tuple(meta.items()), hints)


# specialisation -> programs the GPU holds at once; measured once per process
_RESIDENT: dict[tuple, int] = {}


def _resident_programs(device: torch.device, kernel, args, meta) -> int:
    """Programs of this compiled specialisation of ``kernel`` that the whole GPU holds at once.

    The kernel is compiled (or fetched from Triton's cache) without launching, and its real
    register and shared-memory use decide the occupancy: the projection backward runs at
    173-255 registers with 8 warps, where only one program fits per SM, not the two a fixed
    guess would assume. It depends only on the specialisation and the device, so the reduction
    order of the weight-gradient partials stays fixed.
    """
    if INTERPRET or device.type != "cuda":
        return 4
    key = _specialisation(kernel, device, args, meta)
    if key not in _RESIDENT:
        with _device_guard(device):
            compiled = _loaded(kernel.warmup(*args, grid=(1,), **_register_options(kernel, device, args, meta)))
        props = torch.cuda.get_device_properties(device)
        _RESIDENT[key] = props.multi_processor_count * programs_per_sm(
            compiled.n_regs, compiled.metadata.num_warps, compiled.metadata.shared,
            regs_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
            max_threads_per_sm=getattr(props, "max_threads_per_multi_processor", 2048),
            shared_per_sm=getattr(props, "shared_memory_per_multiprocessor", 233472),
        )
    return _RESIDENT[key]


def _loaded(compiled):
    """The compiled kernel with its binary loaded, so ``n_regs`` and ``n_spills`` are filled in."""
    compiled._init_handles()
    return compiled


def _spills(compiled) -> bool:
    return _loaded(compiled).n_spills > 0


# specialisation -> whether its launch lifts ptxas's register cap; decided once per process
_CAP_LIFTED: dict[tuple, bool] = {}


def _register_options(kernel, device: torch.device, args, meta) -> dict:
    """``meta``, plus ``maxnreg`` where the default compile of this specialisation spills.

    Decided once per specialisation by compiling without launching. The interpreter has no
    registers.
    """
    if INTERPRET:
        return meta
    key = _specialisation(kernel, device, args, meta)
    if key not in _CAP_LIFTED:
        with _device_guard(device):
            _CAP_LIFTED[key] = _spills(kernel.warmup(*args, grid=(1,), **meta))
    return dict(meta, maxnreg=_MAXNREG) if _CAP_LIFTED[key] else meta


def _device_guard(device: torch.device):
    """Make ``device`` current for a launch: Triton launches on the current CUDA device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(kernel, grid, device: torch.device, *args, **meta):
    """Every kernel launch goes through here, on the device of its tensors."""
    options = _register_options(kernel, device, args, meta)
    with _device_guard(device):
        _run(kernel, grid, args, options)


def _run(kernel, grid, args, options):
    kernel[grid](*args, **options)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


def _bounds_args(seq_bounds, dummy):
    """(pointer tensor, has_bounds): int64 [2, B*L] per-token sequence bounds, or none."""
    if seq_bounds is None:
        return dummy, False
    return seq_bounds.contiguous(), True


def _forward(query, key_conv, values, weight, bias, logits, num_heads, padding_l, padding_mask, seq_bounds,
             save_probs):
    _check_interpretable(values.dtype, values.device)
    batch, length, channels = values.shape
    fused = logits is None
    kernel_size = (weight.shape[0] if fused else logits.shape[2]) // num_heads
    head_size = channels // num_heads
    acc_tl, acc_torch = _acc_dtypes(values.dtype)
    out = torch.empty((batch, length, channels), dtype=values.dtype, device=values.device)
    probs_shape = (batch, length, num_heads, kernel_size) if save_probs else (0,)
    probs = torch.empty(probs_shape, dtype=acc_torch, device=values.device)
    if out.numel() == 0:
        return out, probs

    n_pad, k_pad, d_pad = _head_pads(num_heads, kernel_size, head_size)
    block_t, num_warps = _token_tile(length, max(n_pad * d_pad, n_pad * k_pad), values.element_size())
    mask_t, s_mb, s_ml, has_mask = _mask_args(padding_mask, values)
    if fused:
        a_dim = query.shape[2]
        block_a = _proj_block_a(a_dim, n_pad * k_pad, block_t)
        q, kc, w, lg = query, key_conv, weight, values
        lg_strides = (0, 0, 0)
        q_strides, kc_strides, w_strides = query.stride(), key_conv.stride(), weight.stride()
    else:
        a_dim, block_a = 0, 16
        q = kc = w = lg = logits
        lg_strides = logits.stride()
        q_strides = kc_strides = (0, 0, 0)
        w_strides = (0, 0)
    bounds_t, has_bounds = _bounds_args(seq_bounds, values)
    int64 = _needs_int64(query, key_conv, values, logits, out, probs)
    tiles = triton.cdiv(length, block_t)
    grid = (tiles * batch, triton.cdiv(num_heads, n_pad))
    _launch(
        _fwd_kernel, grid, values.device,
        q, kc, w, bias if bias is not None else values, lg, values, mask_t, bounds_t, out, probs,
        length, a_dim, channels, num_heads, head_size, tiles, batch * length,
        *q_strides, *kc_strides, *w_strides, *lg_strides, *values.stride(), s_mb, s_ml,
        K=kernel_size, P=padding_l, FUSED=fused, HAS_BIAS=bias is not None, HAS_MASK=has_mask,
        HAS_BOUNDS=has_bounds, SAVE_PROBS=save_probs,
        BLOCK_T=block_t, BLOCK_A=block_a, N_PAD=n_pad, K_PAD=k_pad, D_PAD=d_pad,
        INT64=int64, PREC=_dot_precision(values.dtype), ACC=acc_tl,
        num_warps=num_warps,
    )
    return out, probs


def span_forward(query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds=None,
                 save_probs=True):
    """Fused forward of ``span_dynamic_conv``.

    Args:
        query, key_conv: ``[B, L, A]``; values: ``[B, L, C]``; weight: ``[n*K, A]``;
        bias: ``[n*K]`` or None; padding_l: the window offset in ``[0, K - 1]``;
        padding_mask: bool ``[B, L]`` or None; seq_bounds: int64 ``[2, B*L]``, each token's
        sequence as flattened rows ``[start, end)`` (packed sequences), or None. Any strides.
        save_probs: write the probabilities for a backward pass (skip it for inference).

    Returns:
        ``(out, probs)``: ``out`` ``[B, L, C]`` in the input dtype (contiguous) and the softmaxed
        taps ``probs`` ``[B, L, n, K]`` in fp32 (fp64 for fp64 inputs), kept for the backward;
        ``probs`` is an empty ``[0]`` tensor when ``save_probs`` is False.
    """
    return _forward(query, key_conv, values, weight, bias, None, num_heads, padding_l, padding_mask, seq_bounds,
                    save_probs)


def dynamic_forward(values, logits, num_heads, padding_l, padding_mask, seq_bounds=None, save_probs=True):
    """Forward of ``dynamic_conv`` from given logits ``[B, L, n*K]`` (any strides: an expanded
    kernel shared by every position is read in place); returns ``(out, probs)``."""
    return _forward(None, None, values, None, None, logits, num_heads, padding_l, padding_mask, seq_bounds,
                    save_probs)


def window_backward(grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds, d_logits_dtype):
    """Gradients through the softmax and the window sum.

    Returns:
        ``(d_values, d_logits)``: ``d_values`` ``[B, L, C]`` in the values' dtype, gathered
        without atomics; ``d_logits`` ``[B, L, n*K]`` in ``d_logits_dtype``.
    """
    _check_interpretable(values.dtype, values.device)
    batch, length, channels = values.shape
    kernel_size = probs.shape[3]
    head_size = channels // num_heads
    acc_tl, _ = _acc_dtypes(values.dtype)
    d_values = torch.empty((batch, length, channels), dtype=values.dtype, device=values.device)
    d_logits = torch.empty((batch, length, num_heads * kernel_size), dtype=d_logits_dtype, device=values.device)
    if d_values.numel() == 0:
        return d_values.zero_(), d_logits.zero_()
    n_pad, k_pad, d_pad = _head_pads(num_heads, kernel_size, head_size)
    # no tl.dot here, so tiles may be narrower than 16 tokens
    block_t, num_warps = _token_tile(length, max(n_pad * d_pad, n_pad * k_pad), values.element_size(), min_tokens=1)
    mask_t, s_mb, s_ml, has_mask = _mask_args(padding_mask, values)
    bounds_t, has_bounds = _bounds_args(seq_bounds, values)
    int64 = _needs_int64(grad_out, values, probs, d_values, d_logits)
    tiles = triton.cdiv(length, block_t)
    grid = (tiles * batch, triton.cdiv(num_heads, n_pad))
    _launch(
        _bwd_window_kernel, grid, values.device,
        grad_out, values, probs, mask_t, bounds_t, d_values, d_logits,
        length, channels, num_heads, head_size, tiles, batch * length,
        *grad_out.stride(), *values.stride(), s_mb, s_ml,
        K=kernel_size, P=padding_l, HAS_MASK=has_mask, HAS_BOUNDS=has_bounds, BLOCK_T=block_t, N_PAD=n_pad, K_PAD=k_pad, D_PAD=d_pad,
        INT64=int64, ACC=acc_tl, num_warps=num_warps,
    )
    return d_values, d_logits


def projection_backward(d_logits, query, key_conv, weight, num_heads):
    """Gradients through ``logits = (query * key_conv) @ weight.T + bias``.

    ``d_logits`` is the contiguous ``[B, L, n*K]`` accumulation-type buffer from
    :func:`window_backward`. Returns ``(d_query, d_key_conv, d_weight, d_bias)``; the weight and
    bias gradients are per-program partials summed by ``torch.sum`` in a fixed order, so they
    are bitwise reproducible.
    """
    _check_interpretable(query.dtype, query.device)
    batch, length, a_dim = query.shape
    kernel_size = weight.shape[0] // num_heads
    n_k = weight.shape[0]
    acc_tl, acc_torch = _acc_dtypes(query.dtype)
    d_query = torch.empty((batch, length, a_dim), dtype=query.dtype, device=query.device)
    d_key_conv = torch.empty_like(d_query)
    tokens = batch * length
    if tokens == 0 or a_dim == 0:  # logits = bias alone (or nothing): d_bias still sums d_logits
        d_bias = d_logits.reshape(tokens, n_k).sum(dim=0).to(weight.dtype)
        return d_query.zero_(), d_key_conv.zero_(), torch.zeros_like(weight), d_bias
    n_pad, k_pad, _ = _head_pads(num_heads, kernel_size, None)
    nkp = n_pad * k_pad
    block_t, block_a, num_warps = _proj_config(tokens, a_dim, nkp, query.element_size())
    a_blocks = triton.cdiv(a_dim, block_a)
    tiles = triton.cdiv(tokens, block_t)
    int64 = _needs_int64(query, key_conv, d_logits, d_query)  # the partials' offsets are int64 anyway

    def args(tok_per_prog, dw_part, db_part):
        return (d_logits, query, key_conv, weight, d_query, d_key_conv, dw_part, db_part,
                tokens, length, a_dim, num_heads, tok_per_prog,
                *query.stride(), *key_conv.stride(), *weight.stride())

    meta = dict(K=kernel_size, BLOCK_T=block_t, BLOCK_A=block_a, N_PAD=n_pad, K_PAD=k_pad,
                INT64=int64, PREC=_dot_precision(query.dtype), ACC=acc_tl, num_warps=num_warps)
    # As many programs as the GPU holds at once, each looping over a run of tiles, so that the
    # number of partial d_weight buffers (one per run) stays small. Any run length that is a
    # multiple of BLOCK_T gives the same specialisation, so BLOCK_T stands in while sizing.
    partial_like = torch.empty(1, dtype=acc_torch, device=query.device)  # same dtype and alignment
    probe = args(block_t, partial_like, partial_like)
    resident = _resident_programs(query.device, _bwd_proj_kernel, probe, meta)
    runs = max(1, min(tiles, triton.cdiv(resident, a_blocks)))
    tok_per_prog = triton.cdiv(tiles, runs) * block_t
    runs = triton.cdiv(tokens, tok_per_prog)
    dw_part = torch.empty((runs, n_k, a_dim), dtype=acc_torch, device=query.device)
    db_part = torch.empty((runs, n_k), dtype=acc_torch, device=query.device)
    _launch(_bwd_proj_kernel, (runs, a_blocks), query.device, *args(tok_per_prog, dw_part, db_part), **meta)
    d_weight = dw_part.sum(dim=0).to(weight.dtype)
    d_bias = db_part.sum(dim=0).to(weight.dtype)
    return d_query, d_key_conv, d_weight, d_bias


def span_backward(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask,
                  seq_bounds=None):
    """Backward of ``span_dynamic_conv``: ``(d_query, d_key_conv, d_values, d_weight, d_bias)``."""
    d_values, d_logits = window_backward(grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds,
                                         probs.dtype)
    d_query, d_key_conv, d_weight, d_bias = projection_backward(d_logits, query, key_conv, weight, num_heads)
    return d_query, d_key_conv, d_values, d_weight, d_bias

