// CUDA implementation of span_dynamic_conv: the window kernels, the fused span forward and the
// projection backward, with deterministic weight and bias gradients.
//
// Precision: every kernel reads and writes the input dtype and accumulates in fp32 (fp64 for
// float64 inputs). For fp16/bf16 the A -> n*K projection and its two backward products run on
// tensor cores (nvcuda::wmma 16x16x16, fp32 accumulators) with operands rounded to the input
// dtype, exactly where the Triton backend rounds (tests/lowp_emulation.py, kernel="triton"):
// ca = q * kc formed in fp32 and rounded; d_logits rounded before both backward products;
// d_bias summed from the unrounded fp32 d_logits. float32/float64 use the same kernels with
// exact FMA products in shared memory instead of wmma (no TF32). No fp32 copy of any [N, A],
// [N, C] or [N, R] tensor exists on the fp16/bf16 path; the only [N, R] temporary is d_logits in
// the input dtype, and the only fp32 [N, R] tensor is the probs the contract saves.
//
// Forward (span_forward_kernel): one block per tile of tt tokens of one batch row, all heads.
//   1) logits [tt, R] in shared memory: A in chunks of ak, each chunk's ca = q * kc and weight
//      columns staged (input dtype, zero-padded to multiples of 16) and multiplied in, the fp32
//      accumulator kept in shared memory (any R, no per-R register budget);
//   2) bias, softmax per (token, head) in place, probs written once (coalesced: a tile's rows are
//      contiguous);
//   3) the window sum over C in chunks of kChunk channels (across heads): the value rows
//      [t0 - padding_l, t0 + tt + Q) of the chunk staged as in the window kernels.
//   The weight is re-read from L2 by every block (R * A per tile); q, kc and values once.
//
// Window kernels (dynamic_conv, and the backward of span): one block per (tile of `tt` tokens of
// one sequence, head). The forward softmaxes the tile's logits into shared memory (writing probs
// once when asked to), then walks the head's d channels in chunks of kChunk: the value window of
// the tile, rows [t0 - padding_l, t0 + tt + Q) with Q = K - 1 - padding_l, is staged in shared
// memory (masked rows and rows outside [0, L) as zeros, converted to fp32), and each thread
// produces (token, channel) outputs from it.
// The backward, same blocking: per chunk the value window (as in the forward) and the
// upstream-gradient window [t0 - Q, t0 + tt + padding_l) are staged (both tt + K - 1 rows; they
// coincide only for a centred window); dp[t, k] = <g[t], v[t + k - padding_l]> accumulates in
// shared memory (each (t, k) owned by one thread, chunks in order), and d_values is a gather:
// d_values[s] = mask[s] * sum_k probs[r, k] * g[r] with r = s - k + padding_l, from a band of
// probs staged per tile. For the span op it also writes per-block column sums of the fp32
// d_logits (the d_bias partials, [blocks, R]). No atomics; the result is bitwise reproducible.
//
// Projection backward (proj_backward_kernel): grid (column block of kBA columns of A, token
// split). A block stages its [R, kBA] slice of the weight once, then walks its split in tiles of
// kBT tokens: d_ca = d_logits @ W[:, cols] (tensor cores), d_query = d_ca * kc and d_key_conv =
// d_ca * q written in the input dtype (q and kc stay in registers between the staging and the
// product), and d_weight[:, cols] += d_logits^T (q * kc) accumulated in shared memory. Each
// split writes its partial [R, A]; a second kernel adds the partials in split order.
// Deterministic, no atomics; q * kc never exists in global memory.
//
// Packed sequences (seq_bounds, span_dynamic_conv.h): a tile may span several sequences, so the
// bounds are per token. The windows are staged as above (they cover the batch row, not a
// sequence); instead each token's loops over the taps run over the taps that stay inside its
// sequence only, a contiguous range staged per token in shared memory: [k0, k1) of the value
// taps (src = t + k - padding_l) for the forward's window sum and dp (dp of any other tap is 0),
// and [k0, k1) of the gather taps (r = t + padding_l - k) for d_values. The saved probs stay the
// true softmax over all K taps. Skipping (rather than multiplying by zero) keeps an inf or NaN in
// a neighbouring sequence out, as the CPU kernels' null rows do. Without seq_bounds every range is
// [0, K) and nothing is staged. (The projections are per token: rows never mix.)
//
// Shared memory: tiles are chosen to stay under 44 KiB; shapes that cannot (very wide R, or
// float64 with a wide R) opt in to more with cudaFuncSetAttribute, checked against the device.
//
// Only c10/cuda headers are used (ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers that a
// bare toolkit may lack).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "span_dynamic_conv.h"

namespace convbert_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 32;               // channels staged at a time by the window phases
constexpr int kRowStride = kChunk + 1;   // padded shared-memory row (no bank conflicts on dp)
constexpr size_t kSmemBudget = 44 * 1024;  // tiles are picked to stay under this
constexpr size_t kSmemDefault = 48 * 1024;  // above it a kernel must opt in
// The fused kernels state their occupancy target: left without one, ptxas (sm_90) spilled a few
// bytes at 40 registers chasing occupancy; with it they use up to 128 and spill nothing.
constexpr int kMinBlocks = 2;
// The fused forward is latency-bound (ncu: half its stalls wait on global loads), so it asks for
// four blocks per SM (64 registers, no spill): 0.233 -> 0.136 ms at ConvBERT-base dims, bf16, on an
// H200 (benchmarks/results/gpu-check-nvidia-h200-2026-11-27). The projection backward got slower
// at four (0.294 -> 0.343 ms), so it keeps kMinBlocks.
constexpr int kForwardMinBlocks = 4;
constexpr int kBT = 32;                  // projection backward: tokens per tile
constexpr int kBA = 32;                  // projection backward: columns of A per block
constexpr int kPerThread = kBT * kBA / kThreads;  // (token, column) pairs per thread and tile
static_assert(kBT * kBA % kThreads == 0, "each thread owns the same pairs in every loop");
static_assert(kBT % 16 == 0 && kBA % 16 == 0, "wmma tiles");

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

// fp16/bf16 take the tensor-core path; the storage types are c10's, layout-compatible with CUDA's.
template <typename T>
constexpr bool kTensorCores = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;
template <typename T>
struct wmma_type { using type = T; };
template <>
struct wmma_type<at::Half> { using type = __half; };
template <>
struct wmma_type<at::BFloat16> { using type = __nv_bfloat16; };

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

__host__ __device__ constexpr size_t align32(size_t x) { return (x + 31) / 32 * 32; }
__host__ __device__ constexpr int round16(int x) { return (x + 15) / 16 * 16; }

// The sequence [lo, hi) of the flattened token tok, whose batch row starts at row0: the row
// [row0, row0 + L) without seq_bounds (seq_lo == nullptr); with it, rows 0 and 1 of seq_bounds at
// tok, intersected with the row and clamped to contain tok (as the CPU kernels do: contents that
// break the contract never lead outside the tensors).
__device__ __forceinline__ void token_bounds(const int64_t* __restrict__ seq_lo, const int64_t* __restrict__ seq_hi,
                                             int64_t row0, int64_t L, int64_t tok, int64_t& lo, int64_t& hi) {
  lo = row0;
  hi = row0 + L;
  if (seq_lo != nullptr) {
    lo = min(max(seq_lo[tok], row0), tok);
    hi = max(min(seq_hi[tok], row0 + L), tok + 1);
  }
}

// The taps [a, b) clipped to [0, K), as ints. Every caller's range holds the tap k = padding_l
// (the token itself, lo <= tok < hi), so 0 <= k0 <= padding_l < k1 <= K.
__device__ __forceinline__ void clip_taps(int64_t a, int64_t b, int K, int& k0, int& k1) {
  k0 = a > 0 ? static_cast<int>(a) : 0;
  k1 = b < K ? static_cast<int>(b) : K;
}

// ---- block-wide products in shared memory ------------------------------------------------------
//
// C[M][N] (acc_t, row-major, ldc) = (accumulate ? C : 0) + A[M][Kd] * B[Kd][N], everything in
// shared memory, called by the whole block (no barrier inside: the caller syncs around it).
// A is row-major (A(i, k) at A[i * lda + k]) or column-major (A[i + k * lda]); B likewise
// (B(k, j) at B[k * ldb + j] or B[k + j * ldb]). M, N, Kd are multiples of 16 (zero padding).
// Each output 16x16 tile (wmma) or element (FMA) belongs to a fixed warp / thread, the same on
// every call with the same shape, so repeated accumulation needs no barrier between calls.
//
// Leading dimensions: wmma needs 32-byte aligned tile pointers and leading dimensions that are
// multiples of 16 bytes (8 halves, 4 floats); the FMA path prefers odd ones (shared-memory banks).
template <typename scalar_t>
constexpr int kPadIn = kTensorCores<scalar_t> ? 8 : 1;  // rows of input-dtype operands
template <typename scalar_t>
constexpr int kPadAcc = kTensorCores<scalar_t> ? 4 : 1;  // rows of fp32/fp64 accumulators

// FMA path (float32/float64, exact: no TF32): each thread owns a 2 x 4 register tile, rows
// i0 + p * (M / 2) and columns j0 + q * (N / 4), so that a warp's loads hit consecutive rows and
// columns (no bank conflicts with the odd leading dimensions the FMA layouts use) and each
// loaded element feeds 2 or 4 products. Each output sums its Kd products in order.
template <bool kARow, bool kBRow, typename ct, typename acc_t>
__device__ __forceinline__ void block_gemm_fma(acc_t* C, int ldc, const ct* A, int lda, const ct* B, int ldb, int M,
                                               int N, int Kd, bool accumulate) {
  constexpr int MR = 2, NR = 4;
  const int mt = M / MR, nt = N / NR;
  for (int idx = threadIdx.x; idx < mt * nt; idx += blockDim.x) {
    const int i0 = idx / nt, j0 = idx % nt;
    acc_t s[MR][NR];
#pragma unroll
    for (int p = 0; p < MR; ++p) {
#pragma unroll
      for (int q = 0; q < NR; ++q) s[p][q] = 0;
    }
    for (int k = 0; k < Kd; ++k) {
      acc_t a[MR], b[NR];
#pragma unroll
      for (int p = 0; p < MR; ++p) {
        const int i = i0 + p * mt;
        a[p] = static_cast<acc_t>(kARow ? A[i * lda + k] : A[i + k * lda]);
      }
#pragma unroll
      for (int q = 0; q < NR; ++q) {
        const int j = j0 + q * nt;
        b[q] = static_cast<acc_t>(kBRow ? B[k * ldb + j] : B[k + j * ldb]);
      }
#pragma unroll
      for (int p = 0; p < MR; ++p) {
#pragma unroll
        for (int q = 0; q < NR; ++q) s[p][q] += a[p] * b[q];
      }
    }
#pragma unroll
    for (int p = 0; p < MR; ++p) {
#pragma unroll
      for (int q = 0; q < NR; ++q) {
        acc_t* c = C + (i0 + p * mt) * ldc + j0 + q * nt;
        *c = accumulate ? *c + s[p][q] : s[p][q];
      }
    }
  }
}

// Tensor cores: every caller's layout gives the alignment wmma needs (align32 region offsets,
// kPadIn / kPadAcc leading dimensions, tile offsets that are multiples of 16 elements).
template <bool kARow, bool kBRow, typename ct, typename acc_t>
__device__ __forceinline__ void block_gemm(acc_t* C, int ldc, const ct* A, int lda, const ct* B, int ldb, int M,
                                           int N, int Kd, bool accumulate) {
  if constexpr (kTensorCores<ct>) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    static_assert(std::is_same_v<acc_t, float>, "tensor cores accumulate in fp32");
    namespace wmma = nvcuda::wmma;
    using wt = typename wmma_type<ct>::type;
    using LA = std::conditional_t<kARow, wmma::row_major, wmma::col_major>;
    using LB = std::conditional_t<kBRow, wmma::row_major, wmma::col_major>;
    const wt* a_base = reinterpret_cast<const wt*>(A);
    const wt* b_base = reinterpret_cast<const wt*>(B);
    const int warp = static_cast<int>(threadIdx.x) / 32, warps = static_cast<int>(blockDim.x) / 32;
    const int tiles_n = N / 16, tiles = (M / 16) * tiles_n;
    for (int f = warp; f < tiles; f += warps) {  // warp-uniform: every lane runs the same fragments
      const int m0 = (f / tiles_n) * 16, n0 = (f % tiles_n) * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      if (accumulate) {
        wmma::load_matrix_sync(acc, C + m0 * ldc + n0, ldc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(acc, 0.0f);
      }
      for (int k0 = 0; k0 < Kd; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, wt, LA> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, wt, LB> fb;
        wmma::load_matrix_sync(fa, kARow ? a_base + m0 * lda + k0 : a_base + m0 + k0 * lda, lda);
        wmma::load_matrix_sync(fb, kBRow ? b_base + k0 * ldb + n0 : b_base + k0 + n0 * ldb, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(C + m0 * ldc + n0, acc, ldc, wmma::mem_row_major);
    }
#else
    block_gemm_fma<kARow, kBRow>(C, ldc, A, lda, B, ldb, M, N, Kd, accumulate);  // no bf16 wmma below sm_80
#endif
  } else {
    block_gemm_fma<kARow, kBRow>(C, ldc, A, lda, B, ldb, M, N, Kd, accumulate);
  }
}

// ---- shared-memory layouts (computed identically on the host and in the kernels) ---------------

// Forward: the fp32 logits [tt][ldl]; then the projection's staging (ca [tt][ldc], weight chunk
// [Rpad][ldc], input dtype) which the window phase reuses for the value rows [tt + K - 1][kRowStride]
// (acc dtype); then the packed-sequence tap ranges [tt][2].
struct FwdSmem {
  int ldl, ldc;
  size_t ca, w, v, taps, total;
};

template <typename scalar_t>
__host__ __device__ FwdSmem fwd_smem(int tt, int ak, int Rpad, int K) {
  using acc_t = acc_of<scalar_t>;
  FwdSmem s{};
  s.ldl = Rpad + kPadAcc<scalar_t>;
  s.ldc = ak + kPadIn<scalar_t>;
  const size_t logits = align32(static_cast<size_t>(tt) * s.ldl * sizeof(acc_t));
  s.ca = logits;
  s.w = s.ca + align32(static_cast<size_t>(tt) * s.ldc * sizeof(scalar_t));
  const size_t proj_end = s.w + align32(static_cast<size_t>(Rpad) * s.ldc * sizeof(scalar_t));
  s.v = logits;
  const size_t window_end = s.v + align32(static_cast<size_t>(tt + K - 1) * kRowStride * sizeof(acc_t));
  s.taps = proj_end > window_end ? proj_end : window_end;
  s.total = s.taps + align32(2 * static_cast<size_t>(tt) * sizeof(int));
  return s;
}

// Projection backward: weight slice [Rpad][ldw] and d_weight accumulator [Rpad][lda]; per tile
// d_logits [kBT][ldr], ca [kBT][ldw] (input dtype) and d_ca [kBT][lda] (acc dtype).
struct BwdSmem {
  int ldw, lda, ldr;
  size_t w, dw, dl, ca, dca, total;
};

template <typename scalar_t>
__host__ __device__ BwdSmem bwd_smem(int Rpad) {
  using acc_t = acc_of<scalar_t>;
  BwdSmem s{};
  s.ldw = kBA + kPadIn<scalar_t>;
  s.lda = kBA + kPadAcc<scalar_t>;
  s.ldr = Rpad + kPadIn<scalar_t>;
  s.w = 0;
  s.dw = s.w + align32(static_cast<size_t>(Rpad) * s.ldw * sizeof(scalar_t));
  s.dl = s.dw + align32(static_cast<size_t>(Rpad) * s.lda * sizeof(acc_t));
  s.ca = s.dl + align32(static_cast<size_t>(kBT) * s.ldr * sizeof(scalar_t));
  s.dca = s.ca + align32(static_cast<size_t>(kBT) * s.ldw * sizeof(scalar_t));
  s.total = s.dca + align32(static_cast<size_t>(kBT) * s.lda * sizeof(acc_t));
  return s;
}

// Window kernels: the acc_t arrays, then (packed sequences only) the int tap ranges, 2 per token
// in the forward, 4 in the backward.
template <typename acc_t>
size_t forward_smem(int tt, int K, bool packed) {
  return (static_cast<size_t>(tt) * K + static_cast<size_t>(tt + K - 1) * kRowStride) * sizeof(acc_t) +
         (packed ? 2 * static_cast<size_t>(tt) * sizeof(int) : 0);
}

template <typename acc_t>
size_t backward_smem(int tt, int K, bool packed) {
  return (3 * static_cast<size_t>(tt) * K + 2 * static_cast<size_t>(tt + K - 1) * kRowStride) * sizeof(acc_t) +
         (packed ? 4 * static_cast<size_t>(tt) * sizeof(int) : 0);
}

// Largest tile (tokens per block, from 32 down) whose shared memory fits the budget.
template <typename Fn>
int pick_tile(Fn smem_for, int K, const char* what) {
  int tt = 32;
  while (tt > 1 && smem_for(tt, K) > kSmemBudget) tt /= 2;
  TORCH_CHECK(smem_for(tt, K) <= kSmemBudget, what, ": kernel size K=", K,
              " is too large for the CUDA kernel's shared memory");
  return tt;
}

// Lets `kernel` use `smem` bytes of dynamic shared memory: above the default 48 KiB only by opting
// in, up to what the current device allows.
template <typename Kernel>
void allow_smem(Kernel* kernel, size_t smem, const char* what) {
  if (smem <= kSmemDefault) return;
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(smem <= static_cast<size_t>(optin), what, ": needs ", smem,
              " bytes of shared memory per block, the device allows ", optin);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
}

// ---- window kernels ----------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, typename logit_t>
__global__ void __launch_bounds__(kThreads)
    window_forward_kernel(const scalar_t* __restrict__ values, const logit_t* __restrict__ logits,
                          int64_t logits_token_stride, const bool* __restrict__ mask,
                          const int64_t* __restrict__ seq_lo, const int64_t* __restrict__ seq_hi,
                          scalar_t* __restrict__ out, acc_t* __restrict__ probs, int64_t L, int n, int d, int K,
                          int padding_l, int64_t tiles, int tt) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  acc_t* sp = reinterpret_cast<acc_t*>(smem_raw);  // [tt][K] probs of the tile's tokens
  acc_t* sv = sp + tt * K;                         // [tt + K - 1][kRowStride] value window chunk, from t0 - padding_l
  int* staps = reinterpret_cast<int*>(sv + (tt + K - 1) * kRowStride);  // packed: [tt][2] taps [k0, k1)

  const int64_t b = blockIdx.x / tiles;
  const int64_t t0 = (blockIdx.x % tiles) * tt;
  const int h = blockIdx.y;
  const int64_t C = static_cast<int64_t>(n) * d, R = static_cast<int64_t>(n) * K;
  const int ntok = static_cast<int>(min(static_cast<int64_t>(tt), L - t0));
  const int nw = ntok + K - 1;

  for (int i = threadIdx.x; i < ntok; i += blockDim.x) {
    const int64_t tok = b * L + t0 + i;
    // logits_token_stride is R, or 0 for one row shared by every token (a broadcast kernel)
    const logit_t* lg = logits + tok * logits_token_stride + static_cast<int64_t>(h) * K;
    acc_t mx = static_cast<acc_t>(lg[0]);
    for (int k = 1; k < K; ++k) mx = max(mx, static_cast<acc_t>(lg[k]));
    acc_t sum = 0;
    for (int k = 0; k < K; ++k) {
      const acc_t e = dev_exp(static_cast<acc_t>(lg[k]) - mx);
      sp[i * K + k] = e;
      sum += e;
    }
    const acc_t inv = acc_t(1) / sum;
    for (int k = 0; k < K; ++k) sp[i * K + k] *= inv;
    if (probs != nullptr) {  // saved for the backward
      acc_t* pg = probs + tok * R + static_cast<int64_t>(h) * K;
      for (int k = 0; k < K; ++k) pg[k] = sp[i * K + k];
    }
    if (seq_lo != nullptr) {  // packed sequences: the taps inside the token's sequence
      int64_t lo, hi;
      token_bounds(seq_lo, seq_hi, b * L, L, tok, lo, hi);
      // src = tok - padding_l + k in [lo, hi)
      clip_taps(lo - (tok - padding_l), hi - (tok - padding_l), K, staps[2 * i], staps[2 * i + 1]);
    }
  }
  __syncthreads();

  for (int c0 = 0; c0 < d; c0 += kChunk) {
    const int dc = min(kChunk, d - c0);
    for (int idx = threadIdx.x; idx < nw * kChunk; idx += blockDim.x) {
      const int w = idx / kChunk, j = idx % kChunk;
      const int64_t s = t0 - padding_l + w;
      acc_t x = 0;
      if (j < dc && s >= 0 && s < L && (mask == nullptr || mask[b * L + s])) {
        x = static_cast<acc_t>(values[(b * L + s) * C + static_cast<int64_t>(h) * d + c0 + j]);
      }
      sv[w * kRowStride + j] = x;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < ntok * kChunk; idx += blockDim.x) {
      const int i = idx / kChunk, j = idx % kChunk;
      if (j < dc) {
        const int k0 = seq_lo != nullptr ? staps[2 * i] : 0, k1 = seq_lo != nullptr ? staps[2 * i + 1] : K;
        acc_t a = 0;
        for (int k = k0; k < k1; ++k) a += sp[i * K + k] * sv[(i + k) * kRowStride + j];
        out[(b * L + t0 + i) * C + static_cast<int64_t>(h) * d + c0 + j] = static_cast<scalar_t>(a);
      }
    }
    __syncthreads();
  }
}

// db_partial (span op only, else nullptr): [gridDim.x][R], row blockIdx.x gets the column sums
// over the tile's tokens of the fp32 d_logits of head h (the d_bias partials: the unrounded
// values, although d_logits itself is stored in the input dtype).
template <typename scalar_t, typename acc_t, typename dlogit_t>
__global__ void __launch_bounds__(kThreads)
    window_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ values, const acc_t* __restrict__ probs,
                           const bool* __restrict__ mask, const int64_t* __restrict__ seq_lo,
                           const int64_t* __restrict__ seq_hi, scalar_t* __restrict__ d_values,
                           dlogit_t* __restrict__ d_logits, acc_t* __restrict__ db_partial, int64_t L, int n, int d,
                           int K, int padding_l, int64_t tiles, int tt) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  acc_t* sp = reinterpret_cast<acc_t*>(smem_raw);  // [tt][K] probs of the tile's tokens
  acc_t* sband = sp + tt * K;                      // [tt][K] probs[t0 + i + padding_l - k][k] (0 outside)
  acc_t* sdp = sband + tt * K;                     // [tt][K] dp accumulators, then the fp32 d_logits
  acc_t* sv = sdp + tt * K;                        // [tt + K - 1][kRowStride] values window chunk, from t0 - padding_l
  acc_t* sg = sv + (tt + K - 1) * kRowStride;      // [tt + K - 1][kRowStride] grad window chunk, from t0 - Q
  // packed: [tt][4] the value taps [k0, k1) (dp), then the gather taps [k0, k1) (d_values)
  int* staps = reinterpret_cast<int*>(sg + (tt + K - 1) * kRowStride);

  const int64_t b = blockIdx.x / tiles;
  const int64_t t0 = (blockIdx.x % tiles) * tt;
  const int h = blockIdx.y;
  const int64_t C = static_cast<int64_t>(n) * d, R = static_cast<int64_t>(n) * K;
  const int64_t hK = static_cast<int64_t>(h) * K, hd = static_cast<int64_t>(h) * d;
  const int Q = K - 1 - padding_l;  // taps after the token
  const int ntok = static_cast<int>(min(static_cast<int64_t>(tt), L - t0));
  const int nw = ntok + K - 1;

  for (int idx = threadIdx.x; idx < ntok * K; idx += blockDim.x) {
    const int i = idx / K, k = idx % K;
    const int64_t tok = b * L + t0 + i;
    sp[idx] = probs[tok * R + hK + k];
    int64_t lo, hi;  // tok's sequence; a token r inside it has the same one
    token_bounds(seq_lo, seq_hi, b * L, L, tok, lo, hi);
    const int64_t r = tok + padding_l - k;  // the token whose tap k reads tok
    sband[idx] = (r >= lo && r < hi) ? probs[r * R + hK + k] : acc_t(0);
    sdp[idx] = 0;
    if (seq_lo != nullptr && k == 0) {  // packed sequences: the token's taps, as in the forward
      // value taps: src = tok - padding_l + k in [lo, hi)
      clip_taps(lo - (tok - padding_l), hi - (tok - padding_l), K, staps[4 * i], staps[4 * i + 1]);
      // gather taps: r = tok + padding_l - k in [lo, hi), i.e. k in (tok + padding_l - hi, tok + padding_l - lo]
      clip_taps(tok + padding_l - hi + 1, tok + padding_l - lo + 1, K, staps[4 * i + 2], staps[4 * i + 3]);
    }
  }
  __syncthreads();

  for (int c0 = 0; c0 < d; c0 += kChunk) {
    const int dc = min(kChunk, d - c0);
    for (int idx = threadIdx.x; idx < nw * kChunk; idx += blockDim.x) {
      const int w = idx / kChunk, j = idx % kChunk;
      const int64_t sv_tok = t0 - padding_l + w, sg_tok = t0 - Q + w;
      acc_t x = 0, y = 0;
      if (j < dc && sv_tok >= 0 && sv_tok < L && (mask == nullptr || mask[b * L + sv_tok])) {
        x = static_cast<acc_t>(values[(b * L + sv_tok) * C + hd + c0 + j]);
      }
      if (j < dc && sg_tok >= 0 && sg_tok < L) y = static_cast<acc_t>(grad_out[(b * L + sg_tok) * C + hd + c0 + j]);
      sv[w * kRowStride + j] = x;
      sg[w * kRowStride + j] = y;
    }
    __syncthreads();
    // dp[i, k] += <g[t0 + i], v[t0 + i + k - padding_l]> over this chunk (g row i at sg row i + Q,
    // the value at sv row i + k).
    for (int idx = threadIdx.x; idx < ntok * K; idx += blockDim.x) {
      const int i = idx / K, k = idx % K;
      if (seq_lo != nullptr && (k < staps[4 * i] || k >= staps[4 * i + 1])) continue;  // outside: dp stays 0
      const acc_t* gr = sg + (i + Q) * kRowStride;
      const acc_t* vr = sv + (i + k) * kRowStride;
      acc_t a = 0;
      for (int j = 0; j < dc; ++j) a += gr[j] * vr[j];
      sdp[idx] += a;
    }
    // d_values[t0 + i] = mask * sum_k probs[r][k] * g[r], r = t0 + i + padding_l - k (sg row i + K - 1 - k).
    for (int idx = threadIdx.x; idx < ntok * kChunk; idx += blockDim.x) {
      const int i = idx / kChunk, j = idx % kChunk;
      if (j < dc) {
        const int64_t s = t0 + i;
        acc_t a = 0;
        if (mask == nullptr || mask[b * L + s]) {
          const int k0 = seq_lo != nullptr ? staps[4 * i + 2] : 0, k1 = seq_lo != nullptr ? staps[4 * i + 3] : K;
          for (int k = k0; k < k1; ++k) a += sband[i * K + k] * sg[(i + K - 1 - k) * kRowStride + j];
        }
        d_values[(b * L + s) * C + hd + c0 + j] = static_cast<scalar_t>(a);
      }
    }
    __syncthreads();
  }

  for (int i = threadIdx.x; i < ntok; i += blockDim.x) {
    const int64_t tok = b * L + t0 + i;
    acc_t tot = 0;
    for (int k = 0; k < K; ++k) tot += sp[i * K + k] * sdp[i * K + k];
    dlogit_t* dl = d_logits + tok * R + hK;
    for (int k = 0; k < K; ++k) {
      const acc_t g = sp[i * K + k] * (sdp[i * K + k] - tot);
      dl[k] = static_cast<dlogit_t>(g);
      sdp[i * K + k] = g;  // this token's row only, after its tot: kept for the d_bias partial
    }
  }
  if (db_partial != nullptr) {  // uniform over the block
    __syncthreads();
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      acc_t s = 0;
      for (int i = 0; i < ntok; ++i) s += sdp[i * K + k];  // fixed order
      db_partial[static_cast<int64_t>(blockIdx.x) * R + hK + k] = s;
    }
  }
}

// ---- the fused span forward --------------------------------------------------------------------

// One block per tile of tt (a multiple of 16) tokens of one batch row, all heads; see the file
// comment. weight [R, A], bias [R] or nullptr: the input dtype.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kForwardMinBlocks)
    span_forward_kernel(const scalar_t* __restrict__ query, const scalar_t* __restrict__ key_conv,
                        const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                        const scalar_t* __restrict__ values, const bool* __restrict__ mask,
                        const int64_t* __restrict__ seq_lo, const int64_t* __restrict__ seq_hi,
                        scalar_t* __restrict__ out, acc_of<scalar_t>* __restrict__ probs, int64_t L, int A, int R,
                        int Rpad, int n, int d, int K, int padding_l, int64_t tiles, int tt, int ak) {
  using acc_t = acc_of<scalar_t>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const FwdSmem lay = fwd_smem<scalar_t>(tt, ak, Rpad, K);
  acc_t* sl = reinterpret_cast<acc_t*>(smem_raw);                 // [tt][ldl] logits, then probs
  scalar_t* sca = reinterpret_cast<scalar_t*>(smem_raw + lay.ca);  // [tt][ldc] ca chunk
  scalar_t* sw = reinterpret_cast<scalar_t*>(smem_raw + lay.w);    // [Rpad][ldc] weight chunk: sw[r][j] = W[r][a0 + j]
  acc_t* sv = reinterpret_cast<acc_t*>(smem_raw + lay.v);         // [tt + K - 1][kRowStride] value rows (phase 3)
  int* staps = reinterpret_cast<int*>(smem_raw + lay.taps);       // packed: [tt][2] taps [k0, k1)
  const int ldl = lay.ldl, ldc = lay.ldc;

  const int64_t b = blockIdx.x / tiles;
  const int64_t t0 = (blockIdx.x % tiles) * tt;
  const int64_t tok0 = b * L + t0;  // flattened index of the tile's first token
  const int64_t C = static_cast<int64_t>(n) * d;
  const int ntok = static_cast<int>(min(static_cast<int64_t>(tt), L - t0));
  const int nw = ntok + K - 1;
  const scalar_t zero = static_cast<scalar_t>(acc_t(0));

  // 1) logits[i][r] = sum_a ca[i][a] * W[r][a], rows i >= ntok and columns r >= R zero-padded.
  for (int idx = threadIdx.x; idx < tt * ldl; idx += blockDim.x) sl[idx] = 0;
  for (int a0 = 0; a0 < A; a0 += ak) {
    for (int idx = threadIdx.x; idx < tt * ak; idx += blockDim.x) {
      const int i = idx / ak, j = idx % ak, a = a0 + j;
      acc_t x = 0;
      if (i < ntok && a < A) {
        const int64_t e = (tok0 + i) * A + a;
        x = static_cast<acc_t>(query[e]) * static_cast<acc_t>(key_conv[e]);  // formed in fp32, then rounded
      }
      sca[i * ldc + j] = static_cast<scalar_t>(x);
    }
    for (int idx = threadIdx.x; idx < Rpad * ak; idx += blockDim.x) {
      const int r = idx / ak, j = idx % ak, a = a0 + j;
      sw[r * ldc + j] = (r < R && a < A) ? weight[static_cast<int64_t>(r) * A + a] : zero;
    }
    __syncthreads();
    // B(k, j) = W[j][a0 + k] = sw[j * ldc + k]: column-major
    block_gemm<true, false>(sl, ldl, sca, ldc, sw, ldc, tt, Rpad, ak, true);
    __syncthreads();
  }
  __syncthreads();  // (A == 0: the zeroed logits)

  // 2) bias and softmax over the K taps of each (token, head), in place.
  for (int idx = threadIdx.x; idx < ntok * n; idx += blockDim.x) {
    const int i = idx / n, h = idx % n;
    acc_t* row = sl + i * ldl + h * K;
    acc_t mx = 0;
    for (int k = 0; k < K; ++k) {
      acc_t x = row[k];
      if (bias != nullptr) x += static_cast<acc_t>(bias[h * K + k]);
      row[k] = x;
      mx = k == 0 ? x : max(mx, x);
    }
    acc_t sum = 0;
    for (int k = 0; k < K; ++k) {
      const acc_t e = dev_exp(row[k] - mx);
      row[k] = e;
      sum += e;
    }
    const acc_t inv = acc_t(1) / sum;
    for (int k = 0; k < K; ++k) row[k] *= inv;
  }
  if (seq_lo != nullptr) {  // packed sequences: the taps inside each token's sequence
    for (int i = threadIdx.x; i < ntok; i += blockDim.x) {
      const int64_t tok = tok0 + i;
      int64_t lo, hi;
      token_bounds(seq_lo, seq_hi, b * L, L, tok, lo, hi);
      // src = tok - padding_l + k in [lo, hi)
      clip_taps(lo - (tok - padding_l), hi - (tok - padding_l), K, staps[2 * i], staps[2 * i + 1]);
    }
  }
  __syncthreads();
  if (probs != nullptr) {  // saved for the backward; the tile's rows are contiguous
    for (int idx = threadIdx.x; idx < ntok * R; idx += blockDim.x) {
      const int i = idx / R, r = idx % R;
      probs[tok0 * R + idx] = sl[i * ldl + r];
    }
  }

  // 3) out[i][c] = sum_k p[i][h(c)][k] * v[t0 + i + k - padding_l][c], C in chunks across heads.
  for (int c0 = 0; c0 < n * d; c0 += kChunk) {  // n * d = C < 2^31 (checked on the host)
    const int dc = min(kChunk, n * d - c0);
    for (int idx = threadIdx.x; idx < nw * kChunk; idx += blockDim.x) {
      const int w = idx / kChunk, j = idx % kChunk;
      const int64_t s = t0 - padding_l + w;
      acc_t x = 0;
      if (j < dc && s >= 0 && s < L && (mask == nullptr || mask[b * L + s])) {
        x = static_cast<acc_t>(values[(b * L + s) * C + c0 + j]);
      }
      sv[w * kRowStride + j] = x;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < ntok * kChunk; idx += blockDim.x) {
      const int i = idx / kChunk, j = idx % kChunk;
      if (j < dc) {
        const int c = c0 + j;
        const int h = c / d;
        const acc_t* p = sl + i * ldl + h * K;
        const int k0 = seq_lo != nullptr ? staps[2 * i] : 0, k1 = seq_lo != nullptr ? staps[2 * i + 1] : K;
        acc_t a = 0;
        for (int k = k0; k < k1; ++k) a += p[k] * sv[(i + k) * kRowStride + j];
        out[(tok0 + i) * C + c] = static_cast<scalar_t>(a);
      }
    }
    __syncthreads();
  }
}

// ---- the projection backward -------------------------------------------------------------------

// Grid (ceil(A / kBA), splits); block (x, y) owns the columns [x * kBA, x * kBA + kBA) of A and
// the tokens [y * per_split, min(N, y * per_split + per_split)). d_logits [N, R] in the input
// dtype; writes d_query, d_key_conv (its columns of its tokens) and partial[y] [R, A] (its
// columns): sum over its tokens of d_logits^T (q * kc).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    proj_backward_kernel(const scalar_t* __restrict__ d_logits, const scalar_t* __restrict__ query,
                         const scalar_t* __restrict__ key_conv, const scalar_t* __restrict__ weight,
                         scalar_t* __restrict__ d_query, scalar_t* __restrict__ d_key_conv,
                         acc_of<scalar_t>* __restrict__ partial, int64_t N, int A, int R, int Rpad,
                         int64_t per_split) {
  using acc_t = acc_of<scalar_t>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const BwdSmem lay = bwd_smem<scalar_t>(Rpad);
  scalar_t* sw = reinterpret_cast<scalar_t*>(smem_raw + lay.w);    // [Rpad][ldw]: W[r][a0 + j]
  acc_t* sdw = reinterpret_cast<acc_t*>(smem_raw + lay.dw);        // [Rpad][lda] d_weight accumulator
  scalar_t* sdl = reinterpret_cast<scalar_t*>(smem_raw + lay.dl);  // [kBT][ldr] d_logits tile
  scalar_t* sca = reinterpret_cast<scalar_t*>(smem_raw + lay.ca);  // [kBT][ldw] ca tile (rounded)
  acc_t* sdca = reinterpret_cast<acc_t*>(smem_raw + lay.dca);      // [kBT][lda] d_ca tile
  const int ldw = lay.ldw, lda = lay.lda, ldr = lay.ldr;

  const int a0 = blockIdx.x * kBA;
  const int64_t split = blockIdx.y;
  const int64_t n_begin = split * per_split;
  const int64_t n_end = min(N, n_begin + per_split);
  const scalar_t zero = static_cast<scalar_t>(acc_t(0));

  for (int idx = threadIdx.x; idx < Rpad * kBA; idx += blockDim.x) {
    const int r = idx / kBA, j = idx % kBA, a = a0 + j;
    sw[r * ldw + j] = (r < R && a < A) ? weight[static_cast<int64_t>(r) * A + a] : zero;
    sdw[r * lda + j] = 0;
  }

  for (int64_t t0 = n_begin; t0 < n_end; t0 += kBT) {
    const int nt = static_cast<int>(min(static_cast<int64_t>(kBT), n_end - t0));
    for (int idx = threadIdx.x; idx < kBT * Rpad; idx += blockDim.x) {
      const int i = idx / Rpad, r = idx % Rpad;
      sdl[i * ldr + r] = (i < nt && r < R) ? d_logits[(t0 + i) * R + r] : zero;
    }
    // The same thread stages (i, j) and later writes d_query / d_key_conv of (i, j): q and kc
    // stay in its registers.
    acc_t qr[kPerThread], kr[kPerThread];
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const int idx = static_cast<int>(threadIdx.x) + u * kThreads;
      const int i = idx / kBA, j = idx % kBA, a = a0 + j;
      acc_t x = 0, y = 0;
      if (i < nt && a < A) {
        const int64_t e = (t0 + i) * A + a;
        x = static_cast<acc_t>(query[e]);
        y = static_cast<acc_t>(key_conv[e]);
      }
      qr[u] = x;
      kr[u] = y;
      sca[i * ldw + j] = static_cast<scalar_t>(x * y);  // formed in fp32, then rounded
    }
    __syncthreads();
    // d_ca[i][j] = sum_r dl[i][r] W[r][a0 + j]
    block_gemm<true, true>(sdca, lda, sdl, ldr, sw, ldw, kBT, kBA, Rpad, false);
    // d_weight[r][j] += sum_i dl[i][r] ca[i][j]: A(r, i) = sdl[i * ldr + r] is column-major
    block_gemm<false, true>(sdw, lda, sdl, ldr, sca, ldw, Rpad, kBA, kBT, true);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const int idx = static_cast<int>(threadIdx.x) + u * kThreads;
      const int i = idx / kBA, j = idx % kBA, a = a0 + j;
      if (i < nt && a < A) {
        const acc_t g = sdca[i * lda + j];
        const int64_t e = (t0 + i) * A + a;
        d_query[e] = static_cast<scalar_t>(g * kr[u]);
        d_key_conv[e] = static_cast<scalar_t>(g * qr[u]);
      }
    }
    __syncthreads();  // before the next tile's staging overwrites sdl, sca, sdca
  }
  __syncthreads();  // (an empty split: the zeroed accumulator)

  for (int idx = threadIdx.x; idx < R * kBA; idx += blockDim.x) {
    const int r = idx / kBA, j = idx % kBA, a = a0 + j;
    if (a < A) partial[(split * R + r) * A + a] = sdw[r * lda + j];
  }
}

// total[m] = sum over rows of partial[row][m], in a fixed order: 8 interleaved row groups per
// column, each summed in row order, then the 8 group sums in order. Deterministic, no atomics.
template <typename acc_t>
__global__ void __launch_bounds__(256)
    sum_rows_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ total, int64_t rows, int64_t M) {
  __shared__ acc_t s[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  const int64_t m = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  acc_t a = 0;
  if (m < M) {
    for (int64_t r = ty; r < rows; r += 8) a += partial[r * M + m];
  }
  s[ty][tx] = a;
  __syncthreads();
  if (ty == 0 && m < M) {
    acc_t t = 0;
    for (int g = 0; g < 8; ++g) t += s[g][tx];
    total[m] = t;
  }
}

const bool* mask_ptr(const at::Tensor& mask) { return mask.defined() ? mask.data_ptr<bool>() : nullptr; }

// Row 1 of seq_bounds [2, N] (row 0 is seq_bounds itself), or nullptr without it.
const int64_t* seq_hi_ptr(const int64_t* seq_bounds, int64_t N) {
  return seq_bounds != nullptr ? seq_bounds + N : nullptr;
}

void check_grid(int64_t blocks, int64_t n) {
  TORCH_CHECK(blocks < (int64_t{1} << 31), "too many token tiles for one CUDA launch");
  TORCH_CHECK(n <= 65535, "num_heads must be <= 65535 on CUDA");
}

// total [M] (a contiguous acc tensor, any shape) = the row sums of partial [rows, M].
void sum_rows(const at::Tensor& partial, at::Tensor& total, int64_t rows, int64_t M, cudaStream_t stream) {
  if (M == 0) return;
  TORCH_CHECK((M + 31) / 32 < (int64_t{1} << 31), "reduction too large for one CUDA launch");
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "sum_rows_cuda", [&] {
    sum_rows_kernel<scalar_t><<<static_cast<unsigned>((M + 31) / 32), dim3(32, 8), 0, stream>>>(
        partial.data_ptr<scalar_t>(), total.data_ptr<scalar_t>(), rows, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The window backward; with want_dbias (the span op) also returns d_bias [R] (acc dtype), the
// column sums of the fp32 d_logits, reduced deterministically from per-block partials.
at::Tensor run_window_backward(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& probs,
                               const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads,
                               int64_t padding_l, at::Tensor& d_values, at::Tensor& d_logits, bool want_dbias) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, R = probs.size(2), K = R / n;
  at::Tensor d_bias = want_dbias ? at::empty({R}, probs.options()) : at::Tensor();
  if (B * L == 0 || C == 0) {  // d_logits = p * (0 - 0) = 0
    if (B * L > 0) d_logits.zero_();
    if (want_dbias) d_bias.zero_();
    return d_bias;
  }
  c10::cuda::CUDAGuard guard(values.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool dlogits_acc = d_logits.scalar_type() != values.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "window_backward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool packed = seq_bounds != nullptr;
    const int tt = pick_tile([packed](int t, int k) { return backward_smem<acc_t>(t, k, packed); },
                             static_cast<int>(K), "span_dynamic_conv backward");
    const int64_t tiles = (L + tt - 1) / tt;
    check_grid(B * tiles, n);
    const dim3 grid(static_cast<unsigned>(B * tiles), static_cast<unsigned>(n));
    const size_t smem = backward_smem<acc_t>(tt, static_cast<int>(K), packed);
    at::Tensor db_partial = want_dbias ? at::empty({B * tiles, R}, probs.options()) : at::Tensor();
    auto launch = [&](auto dlogit_tag) {
      using dlogit_t = decltype(dlogit_tag);
      window_backward_kernel<scalar_t, acc_t, dlogit_t><<<grid, kThreads, smem, stream>>>(
          grad_out.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), probs.data_ptr<acc_t>(), mask_ptr(mask),
          seq_bounds, seq_hi_ptr(seq_bounds, B * L), d_values.data_ptr<scalar_t>(), d_logits.data_ptr<dlogit_t>(),
          want_dbias ? db_partial.data_ptr<acc_t>() : nullptr, L, static_cast<int>(n), static_cast<int>(d),
          static_cast<int>(K), static_cast<int>(padding_l), tiles, tt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (dlogits_acc) {
      launch(acc_t{});
    } else {
      launch(scalar_t{});
    }
    if (want_dbias) sum_rows(db_partial, d_bias, B * tiles, R, stream);
  });
  return d_bias;
}

}  // namespace

// Window kernels; logits / d_logits may be in the values dtype (dynamic_conv) or the
// accumulation dtype.
void window_forward_cuda(const at::Tensor& values, const at::Tensor& logits, int64_t logits_token_stride,
                         const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l,
                         at::Tensor& out, at::Tensor& probs) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, K = logits.size(-1) / n;  // logits [B, L, R] or one row [R]
  if (B * L == 0) return;  // (C == 0 still writes probs: the channel loops are empty)
  c10::cuda::CUDAGuard guard(values.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool logits_acc = logits.scalar_type() != values.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "window_forward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const bool packed = seq_bounds != nullptr;
    const int tt = pick_tile([packed](int t, int k) { return forward_smem<acc_t>(t, k, packed); },
                             static_cast<int>(K), "span_dynamic_conv forward");
    const int64_t tiles = (L + tt - 1) / tt;
    check_grid(B * tiles, n);
    const dim3 grid(static_cast<unsigned>(B * tiles), static_cast<unsigned>(n));
    const size_t smem = forward_smem<acc_t>(tt, static_cast<int>(K), packed);
    auto launch = [&](auto logit_tag) {
      using logit_t = decltype(logit_tag);
      window_forward_kernel<scalar_t, acc_t, logit_t><<<grid, kThreads, smem, stream>>>(
          values.data_ptr<scalar_t>(), logits.data_ptr<logit_t>(), logits_token_stride, mask_ptr(mask), seq_bounds,
          seq_hi_ptr(seq_bounds, B * L), out.data_ptr<scalar_t>(),
          probs.defined() ? probs.data_ptr<acc_t>() : nullptr, L, static_cast<int>(n), static_cast<int>(d),
          static_cast<int>(K), static_cast<int>(padding_l), tiles, tt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (logits_acc) {
      launch(acc_t{});
    } else {
      launch(scalar_t{});
    }
  });
}

void window_backward_cuda(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& probs,
                          const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l,
                          at::Tensor& d_values, at::Tensor& d_logits) {
  run_window_backward(grad_out, values, probs, mask, seq_bounds, num_heads, padding_l, d_values, d_logits, false);
}

// The CUDA forward of span_dynamic_conv: one fused kernel (projection on tensor cores for
// fp16/bf16, softmax, window sum); see the file comment.
void span_forward_cuda(const at::Tensor& query, const at::Tensor& key_conv, const at::Tensor& values,
                       const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mask,
                       const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l, at::Tensor& out,
                       at::Tensor& probs) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2), A = query.size(1), R = weight.size(0);
  const int64_t n = num_heads, d = C / n, K = R / n;
  if (B * L == 0) return;
  TORCH_CHECK(R <= (int64_t{1} << 20) && A < (int64_t{1} << 30) && C < (int64_t{1} << 30),
              "span_dynamic_conv: weight [", R, ", ", A, "] or C=", C, " too large for the CUDA kernel");
  c10::cuda::CUDAGuard guard(values.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "span_forward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const int Rpad = round16(static_cast<int>(R));
    // Largest tile (32 tokens, or 16 for short rows) and A chunk within the budget; past it the
    // smallest, with more shared memory opted in.
    int tt = 16, ak = 16;
    bool found = false;
    for (const int t : {L <= 16 ? 16 : 32, 16}) {
      for (const int c : {32, 16}) {
        if (!found && fwd_smem<scalar_t>(t, c, Rpad, static_cast<int>(K)).total <= kSmemBudget) {
          tt = t;
          ak = c;
          found = true;
        }
      }
    }
    const size_t smem = fwd_smem<scalar_t>(tt, ak, Rpad, static_cast<int>(K)).total;
    allow_smem(span_forward_kernel<scalar_t>, smem, "span_dynamic_conv forward");
    const int64_t tiles = (L + tt - 1) / tt;
    check_grid(B * tiles, 1);
    span_forward_kernel<scalar_t><<<static_cast<unsigned>(B * tiles), kThreads, smem, stream>>>(
        query.data_ptr<scalar_t>(), key_conv.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
        bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, values.data_ptr<scalar_t>(), mask_ptr(mask),
        seq_bounds, seq_hi_ptr(seq_bounds, B * L), out.data_ptr<scalar_t>(),
        probs.defined() ? probs.data_ptr<acc_t>() : nullptr, L, static_cast<int>(A), static_cast<int>(R), Rpad,
        static_cast<int>(n), static_cast<int>(d), static_cast<int>(K), static_cast<int>(padding_l), tiles, tt, ak);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The CUDA backward: the window backward (d_values as a gather; d_logits in the input dtype; the
// d_bias partials from the fp32 d_logits), then the projection backward (d_query, d_key_conv and
// the d_weight partials) and the two ordered reductions.
std::tuple<at::Tensor, at::Tensor> span_backward_cuda(const at::Tensor& grad_out, const at::Tensor& query,
                                                      const at::Tensor& key_conv, const at::Tensor& values,
                                                      const at::Tensor& weight, const at::Tensor& probs,
                                                      const at::Tensor& mask, const int64_t* seq_bounds,
                                                      int64_t num_heads, int64_t padding_l, at::Tensor& d_query,
                                                      at::Tensor& d_key_conv, at::Tensor& d_values) {
  const int64_t B = values.size(0), L = values.size(1), N = B * L, A = query.size(1), R = weight.size(0);
  const auto acc_opts = values.options().dtype(acc_dtype_for(values.scalar_type()));
  c10::cuda::CUDAGuard guard(values.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor d_logits = at::empty({B, L, R}, values.options());  // the input dtype: [N, R] half for fp16/bf16
  at::Tensor d_bias =
      run_window_backward(grad_out, values, probs, mask, seq_bounds, num_heads, padding_l, d_values, d_logits, true);
  at::Tensor d_weight = at::empty({R, A}, acc_opts);
  if (N == 0 || A == 0) return {d_weight.zero_(), d_bias};
  TORCH_CHECK(R <= (int64_t{1} << 20) && A < (int64_t{1} << 30), "span_dynamic_conv: weight [", R, ", ", A,
              "] too large for the CUDA kernel");
  // Token splits: a multiple of kBT tokens, at least 512 and at most 32 splits, so the [splits, R, A]
  // fp32 partials stay small next to the per-token traffic. Depends on N only: reproducible.
  int64_t per_split = std::max<int64_t>(512, (N + 31) / 32);
  per_split = (per_split + kBT - 1) / kBT * kBT;
  const int64_t splits = (N + per_split - 1) / per_split;
  const int64_t col_blocks = (A + kBA - 1) / kBA;
  at::Tensor partial = at::empty({splits, R, A}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "span_backward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const int Rpad = round16(static_cast<int>(R));
    const size_t smem = bwd_smem<scalar_t>(Rpad).total;
    allow_smem(proj_backward_kernel<scalar_t>, smem, "span_dynamic_conv backward");
    TORCH_CHECK(col_blocks < (int64_t{1} << 31) && splits <= 65535, "span_dynamic_conv: grid too large");
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
    proj_backward_kernel<scalar_t><<<grid, kThreads, smem, stream>>>(
        d_logits.data_ptr<scalar_t>(), query.data_ptr<scalar_t>(), key_conv.data_ptr<scalar_t>(),
        weight.data_ptr<scalar_t>(), d_query.data_ptr<scalar_t>(), d_key_conv.data_ptr<scalar_t>(),
        partial.data_ptr<acc_t>(), N, static_cast<int>(A), static_cast<int>(R), Rpad, per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  sum_rows(partial, d_weight, splits, R * A, stream);
  return {d_weight, d_bias};
}

}  // namespace convbert_kernels
