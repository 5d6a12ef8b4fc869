// Shared declarations of the native span-based dynamic convolution (ConvBERT).
//
// Notation: B batch, L sequence length, A query width, n heads, d head size, C = n * d,
// K >= 1 kernel size, padding_l in [0, K - 1] the taps before the token (ConvBERT's centred window:
// (K - 1) / 2; causal: K - 1), Q = K - 1 - padding_l the taps after it, N = B * L tokens,
// R = n * K logits per token.
//
//   probs[b, t, h, :]    = softmax_k(logits[b, t, h * K + k])                        (accumulation dtype)
//   out[b, t, h, j]      = sum_k probs[b, t, h, k] * vm[b, t + k - padding_l, h, j]  (vm = values * mask,
//                                                                                  zero outside [0, L))
// and the backward pieces
//   dp[b, t, h, k]       = sum_j g[b, t, h, j] * vm[b, t + k - padding_l, h, j]
//   d_logits             = probs * (dp - sum_k probs * dp)
//   d_values[b, s, h, j] = mask[b, s] * sum_k probs[b, r, h, k] * g[b, r, h, j],  r = s - k + padding_l
//                          (r outside [0, L) contributes nothing)
// so the forward and dp read the values rows [t - padding_l, t + Q], and the d_values gather reads
// the gradient rows [s - Q, s + padding_l]: the two windows coincide only for a centred window.
//
// Packed sequences (flash-attention's "varlen" layout): seq_bounds, int64 [2, N] in flattened token
// coordinates f = b * L + t, gives each token its sequence [seq_bounds[0, f], seq_bounds[1, f]),
// the same for every token of a sequence. A window row (flattened) s is then valid for token f only
// within f's sequence; invalid rows read as zeros exactly like rows outside [0, L) (the softmax still
// runs over all K taps: dp of an invalid tap is 0, and the d_values gather only takes tokens r of
// s's own sequence). Without seq_bounds every token's sequence is its batch row [b * L, b * L + L).
// The kernels intersect the bounds with the token's batch row and clamp them to contain the token,
// so contents that break the contract (not checked: that would need a device sync) never read
// outside the tensors; the results for such contents are unspecified.
//
// Each device's file (span_dynamic_conv_cpu.cpp, span_dynamic_conv_cuda.cu) provides the entry
// points below: the "window" kernels (softmax + window sum, and their backward) and the span
// forward/backward around them (the A -> n*K projection as GEMMs through ATen). ops.cpp checks
// the inputs and registers the ops.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace convbert_kernels {

// The dtype softmax and accumulation run in: float64 for float64 inputs, else float32.
inline at::ScalarType acc_dtype_for(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Each device provides four entry points (all tensors contiguous, on that device, except the
// logits' token stride; padding_l already checked to lie in [0, K - 1]):
//
// window_forward: values [B, L, C], logits (values dtype) with the row of token tok = b * L + t at
//   logits + tok * logits_token_stride: R for a contiguous [B, L, R], 0 for one row [R] shared by
//   every token (a broadcast kernel, never materialised per token); mask bool [B, L] or undefined;
//   seq_bounds the data of an int64 [2, B * L] tensor on the device, or nullptr (batch rows);
//   writes out [B, L, C], and probs [B, L, R] (acc dtype) unless probs is undefined (not saved).
// window_backward: grad_out, values [B, L, C], probs [B, L, R] (acc dtype); writes d_values
//   [B, L, C] and d_logits [B, L, R] (values dtype).
// span_forward: query, key_conv [N, A], values [B, L, C], weight [R, A] and bias [R] or undefined,
//   all in the input dtype (a device converts what it needs: no full-size copies); writes out and
//   probs (if defined). The logits are (query * key_conv) @ weight^T + bias.
// span_backward: as above plus grad_out and probs; writes d_query, d_key_conv [N, A] (input dtype)
//   and d_values; returns (d_weight [R, A], d_bias [R]) in the acc dtype. The weight/bias
//   reduction is deterministic (fixed token ranges, partials summed in a fixed order).
#define CONVBERT_DECLARE_DEVICE(dev)                                                                                 \
  void window_forward_##dev(const at::Tensor& values, const at::Tensor& logits, int64_t logits_token_stride,         \
                            const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads,                    \
                            int64_t padding_l, at::Tensor& out, at::Tensor& probs);                                  \
  void window_backward_##dev(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& probs,          \
                             const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads,                   \
                             int64_t padding_l, at::Tensor& d_values, at::Tensor& d_logits);                         \
  void span_forward_##dev(const at::Tensor& query, const at::Tensor& key_conv, const at::Tensor& values,             \
                          const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mask,                \
                          const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l, at::Tensor& out,          \
                          at::Tensor& probs);                                                                        \
  std::tuple<at::Tensor, at::Tensor> span_backward_##dev(                                                            \
      const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key_conv,                               \
      const at::Tensor& values, const at::Tensor& weight, const at::Tensor& probs, const at::Tensor& mask,           \
      const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l, at::Tensor& d_query, at::Tensor& d_key_conv,  \
      at::Tensor& d_values);

CONVBERT_DECLARE_DEVICE(cpu)
#ifdef CONVBERT_WITH_CUDA
CONVBERT_DECLARE_DEVICE(cuda)
#endif

}  // namespace convbert_kernels
