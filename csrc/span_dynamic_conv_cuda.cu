// CUDA implementation of the window kernels and the deterministic weight gradient.
//
// Window kernels: one block per (tile of `tt` tokens of one sequence, head). The block softmaxes
// the tile's logits into shared memory (writing probs once for the backward, when asked to), then
// walks the head's d channels in chunks of kChunk: the value window of the tile, rows
// [t0 - padding_l, t0 + tt + Q) with Q = K - 1 - padding_l, is staged in shared memory (masked
// rows and rows outside [0, L) as zeros, converted to fp32), and each thread produces
// (token, channel) outputs from it. Accumulation is fp32 (fp64 for float64 inputs).
//
// Backward, same blocking: per chunk the value window (as in the forward) and the
// upstream-gradient window [t0 - Q, t0 + tt + padding_l) are staged (both tt + K - 1 rows; they
// coincide only for a centred window); dp[t, k] = <g[t], v[t + k - padding_l]> accumulates in
// shared memory (each (t, k) owned by one thread, chunks in order), and d_values is a gather:
// d_values[s] = mask[s] * sum_k probs[r, k] * g[r] with r = s - k + padding_l, from a band of
// probs staged per tile. No atomics; the result is bitwise reproducible.
//
// Packed sequences (seq_bounds, span_dynamic_conv.h): a tile may span several sequences, so the
// bounds are per token. The windows are staged as above (they cover the batch row, not a
// sequence); instead each token's loops over the taps run over the taps that stay inside its
// sequence only, a contiguous range staged per token in shared memory: [k0, k1) of the value
// taps (src = t + k - padding_l) for the forward's window sum and dp (dp of any other tap is 0),
// and [k0, k1) of the gather taps (r = t + padding_l - k) for d_values. The saved probs stay the
// true softmax over all K taps. Skipping (rather than multiplying by zero) keeps an inf or NaN in
// a neighbouring sequence out, as the CPU kernels' null rows do. Without seq_bounds every range is
// [0, K) and nothing is staged.
//
// Weight gradient: d_weight = sum_t d_logits[t]^T (query * key_conv)[t] and d_bias (as a column
// of ones) are reduced in two stages: fixed token splits each write a partial [R, A + 1], then a
// second kernel adds the partials in split order. Deterministic, no atomics.
//
// Only c10/cuda headers are used (ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers that a
// bare toolkit may lack).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "span_dynamic_conv.h"

namespace convbert_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 32;               // channels of one head staged at a time
constexpr int kRowStride = kChunk + 1;   // padded shared-memory row (no bank conflicts on dp)
constexpr size_t kSmemBudget = 44 * 1024;  // stay under the 48 KiB default dynamic limit

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

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

// Shared memory of a block: the acc_t arrays, then (packed sequences only) the int tap ranges,
// 2 per token in the forward, 4 in the backward.
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

template <typename scalar_t, typename acc_t, typename logit_t>
__global__ void __launch_bounds__(kThreads)
    window_forward_kernel(const scalar_t* __restrict__ values, const logit_t* __restrict__ logits,
                          int64_t logits_token_stride, const bool* __restrict__ mask,
                          const int64_t* __restrict__ seq_lo, const int64_t* __restrict__ seq_hi,
                          scalar_t* __restrict__ out, acc_t* __restrict__ probs, int64_t L, int n, int d, int K,
                          int padding_l, int64_t tiles, int tt) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
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

template <typename scalar_t, typename acc_t, typename dlogit_t>
__global__ void __launch_bounds__(kThreads)
    window_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ values, const acc_t* __restrict__ probs,
                           const bool* __restrict__ mask, const int64_t* __restrict__ seq_lo,
                           const int64_t* __restrict__ seq_hi, scalar_t* __restrict__ d_values,
                           dlogit_t* __restrict__ d_logits, int64_t L, int n, int d, int K, int padding_l,
                           int64_t tiles, int tt) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* sp = reinterpret_cast<acc_t*>(smem_raw);  // [tt][K] probs of the tile's tokens
  acc_t* sband = sp + tt * K;                      // [tt][K] probs[t0 + i + padding_l - k][k] (0 outside)
  acc_t* sdp = sband + tt * K;                     // [tt][K] dp accumulators
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
    for (int k = 0; k < K; ++k) dl[k] = static_cast<dlogit_t>(sp[i * K + k] * (sdp[i * K + k] - tot));
  }
}

// partial[split][r][a] = sum over the split's tokens of d_logits[t][r] * ca[t][a], where
// ca[t][a] = query * key_conv for a < A and 1 for a == A (the bias column).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    weight_grad_partial_kernel(const acc_t* __restrict__ dl, const scalar_t* __restrict__ query,
                               const scalar_t* __restrict__ key_conv, acc_t* __restrict__ partial, int64_t N, int R,
                               int A, int64_t tokens_per_split) {
  __shared__ acc_t s_dl[32][33];
  __shared__ acc_t s_ca[32][33];
  const int a0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
  const int64_t split = blockIdx.z;
  const int64_t n_begin = split * tokens_per_split;
  const int64_t n_end = min(N, n_begin + tokens_per_split);
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8
  acc_t acc[4] = {0, 0, 0, 0};
  for (int64_t nb = n_begin; nb < n_end; nb += 32) {
    for (int u = 0; u < 4; ++u) {
      const int row = ty + 8 * u;
      const int64_t tok = nb + row;
      const int r = r0 + tx, a = a0 + tx;
      acc_t x = 0, y = 0;
      if (tok < n_end) {
        if (r < R) x = dl[tok * R + r];
        if (a < A) {
          y = static_cast<acc_t>(query[tok * A + a]) * static_cast<acc_t>(key_conv[tok * A + a]);
        } else if (a == A) {
          y = 1;
        }
      }
      s_dl[row][tx] = x;
      s_ca[row][tx] = y;
    }
    __syncthreads();
    for (int tk = 0; tk < 32; ++tk) {
      const acc_t y = s_ca[tk][tx];
      for (int u = 0; u < 4; ++u) acc[u] += s_dl[tk][ty + 8 * u] * y;
    }
    __syncthreads();
  }
  for (int u = 0; u < 4; ++u) {
    const int r = r0 + ty + 8 * u, a = a0 + tx;
    if (r < R && a <= A) partial[(split * R + r) * (A + 1) + a] = acc[u];
  }
}

template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ total, int64_t splits,
                                    int64_t M) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= M) return;
  acc_t s = 0;
  for (int64_t sp = 0; sp < splits; ++sp) s += partial[sp * M + idx];  // fixed order
  total[idx] = s;
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

}  // namespace

// Window kernels; logits / d_logits may be in the values dtype (dynamic_conv) or the
// accumulation dtype (span_dynamic_conv).
void window_forward_cuda(const at::Tensor& values, const at::Tensor& logits, int64_t logits_token_stride,
                         const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l,
                         at::Tensor& out, at::Tensor& probs) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, K = logits.size(-1) / n;  // logits [B, L, R] or one row [R]
  if (B * L == 0 || C == 0) return;
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
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, K = probs.size(2) / n;
  if (B * L == 0) return;
  if (C == 0) {
    d_logits.zero_();
    return;
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
    auto launch = [&](auto dlogit_tag) {
      using dlogit_t = decltype(dlogit_tag);
      window_backward_kernel<scalar_t, acc_t, dlogit_t><<<grid, kThreads, smem, stream>>>(
          grad_out.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), probs.data_ptr<acc_t>(), mask_ptr(mask),
          seq_bounds, seq_hi_ptr(seq_bounds, B * L), d_values.data_ptr<scalar_t>(), d_logits.data_ptr<dlogit_t>(),
          L, static_cast<int>(n), static_cast<int>(d), static_cast<int>(K), static_cast<int>(padding_l), tiles, tt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (dlogits_acc) {
      launch(acc_t{});
    } else {
      launch(scalar_t{});
    }
  });
}

static std::tuple<at::Tensor, at::Tensor> param_grads_cuda(const at::Tensor& d_logits, const at::Tensor& query,
                                                    const at::Tensor& key_conv, const at::Tensor& weight_acc,
                                                    at::Tensor& d_query, at::Tensor& d_key_conv) {
  const int64_t N = d_logits.size(0), R = d_logits.size(1), A = query.size(1);
  const auto opts = d_logits.options();
  const auto acc = d_logits.scalar_type();
  if (N > 0) {
    // d_ca = d_logits @ W (a GEMM), then the two elementwise products.
    const at::Tensor d_ca = at::mm(d_logits, weight_acc);
    d_query.copy_(d_ca * key_conv.to(acc));
    d_key_conv.copy_(d_ca * query.to(acc));
  }
  if (N == 0) return {at::zeros({R, A}, opts), at::zeros({R}, opts)};
  TORCH_CHECK(R < (int64_t{1} << 31) && A < (int64_t{1} << 31) - 1, "weight too large for the CUDA kernel");
  c10::cuda::CUDAGuard guard(d_logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // At most 256 splits of a multiple of 32 tokens, at least 256 tokens each.
  int64_t per_split = std::max<int64_t>(256, (N + 255) / 256);
  per_split = (per_split + 31) / 32 * 32;
  const int64_t splits = (N + per_split - 1) / per_split;
  at::Tensor partial = at::empty({splits, R, A + 1}, opts);
  at::Tensor total = at::empty({R, A + 1}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "param_grads_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    TORCH_CHECK(d_logits.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "d_logits must be the acc dtype");
    const dim3 grid(static_cast<unsigned>((A + 1 + 31) / 32), static_cast<unsigned>((R + 31) / 32),
                    static_cast<unsigned>(splits));
    const dim3 block(32, 8);
    weight_grad_partial_kernel<scalar_t, acc_t><<<grid, block, 0, stream>>>(
        d_logits.data_ptr<acc_t>(), query.data_ptr<scalar_t>(), key_conv.data_ptr<scalar_t>(),
        partial.data_ptr<acc_t>(), N, static_cast<int>(R), static_cast<int>(A), per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t M = R * (A + 1);
    sum_partials_kernel<acc_t><<<static_cast<unsigned>((M + 255) / 256), 256, 0, stream>>>(
        partial.data_ptr<acc_t>(), total.data_ptr<acc_t>(), splits, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {total.narrow(1, 0, A).contiguous(), total.select(1, A).contiguous()};
}

// The CUDA forward of span_dynamic_conv: the A -> n*K projection as a GEMM (cuBLAS, in the
// accumulation dtype), then the fused softmax + window-sum kernel.
void span_forward_cuda(const at::Tensor& query, const at::Tensor& key_conv, const at::Tensor& values,
                       const at::Tensor& weight_acc, const at::Tensor& bias_acc, const at::Tensor& mask,
                       const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l, at::Tensor& out,
                       at::Tensor& probs) {
  const int64_t B = values.size(0), L = values.size(1), R = weight_acc.size(0);
  const auto acc = weight_acc.scalar_type();
  c10::cuda::CUDAGuard guard(values.device());
  at::Tensor logits = at::mm(query.to(acc) * key_conv.to(acc), weight_acc.t());
  if (bias_acc.defined()) logits.add_(bias_acc);
  window_forward_cuda(values, logits.view({B, L, R}), R, mask, seq_bounds, num_heads, padding_l, out, probs);
}

// The CUDA backward: the fused window backward (d_values as a gather, d_logits), then
// d_ca = d_logits @ W (a GEMM), d_query / d_key_conv, and the two-stage deterministic weight and
// bias reduction.
std::tuple<at::Tensor, at::Tensor> span_backward_cuda(const at::Tensor& grad_out, const at::Tensor& query,
                                                      const at::Tensor& key_conv, const at::Tensor& values,
                                                      const at::Tensor& weight_acc, const at::Tensor& probs,
                                                      const at::Tensor& mask, const int64_t* seq_bounds,
                                                      int64_t num_heads, int64_t padding_l, at::Tensor& d_query,
                                                      at::Tensor& d_key_conv, at::Tensor& d_values) {
  const int64_t B = values.size(0), L = values.size(1), R = weight_acc.size(0);
  c10::cuda::CUDAGuard guard(values.device());
  at::Tensor d_logits = at::empty({B, L, R}, weight_acc.options());
  window_backward_cuda(grad_out, values, probs, mask, seq_bounds, num_heads, padding_l, d_values, d_logits);
  return param_grads_cuda(d_logits.view({B * L, R}), query, key_conv, weight_acc, d_query, d_key_conv);
}

}  // namespace convbert_kernels
