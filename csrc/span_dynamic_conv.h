// Shared declarations of the native span-based dynamic convolution (ConvBERT).
//
// Notation: B batch, L sequence length, A query width, n heads, d head size, C = n * d,
// K odd kernel size, P = (K - 1) / 2, N = B * L tokens, R = n * K logits per token.
//
//   probs[b, t, h, :]   = softmax_k(logits[b, t, h * K + k])                  (accumulation dtype)
//   out[b, t, h, j]     = sum_k probs[b, t, h, k] * vm[b, t + k - P, h, j]     (vm = values * mask,
//                                                                             zero outside [0, L))
// and the backward pieces
//   dp[b, t, h, k]      = sum_j g[b, t, h, j] * vm[b, t + k - P, h, j] (+ grad_probs)
//   d_logits            = probs * (dp - sum_k probs * dp)
//   d_values[b, s, h, j] = mask[b, s] * sum_k probs[b, s - k + P, h, k] * g[b, s - k + P, h, j]
//
// Every device provides the "window" kernels (softmax + window sum, and their backward); the
// projection A -> n*K around them is shared code in ops.cpp (GEMMs through ATen).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace convbert_kernels {

// The dtype softmax and accumulation run in: float64 for float64 inputs, else float32.
inline at::ScalarType acc_dtype_for(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// All tensors contiguous. values/out: [B, L, C]; logits: [B, L, R] in the values dtype or the
// accumulation dtype; probs: [B, L, R] accumulation dtype (written); mask: bool [B, L] or undefined.
void window_forward_cpu(const at::Tensor& values, const at::Tensor& logits, const at::Tensor& mask,
                        int64_t num_heads, at::Tensor& out, at::Tensor& probs);

// grad_out, values: [B, L, C]; probs: [B, L, R] (accumulation dtype); grad_probs: same or
// undefined. Writes d_values [B, L, C] and d_logits [B, L, R] (either dtype, as allocated).
void window_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_probs, const at::Tensor& values,
                         const at::Tensor& probs, const at::Tensor& mask, int64_t num_heads,
                         at::Tensor& d_values, at::Tensor& d_logits);

// Gradients of logits = (query * key_conv) @ weight^T + bias with respect to everything but the
// window: from d_logits [N, R] (acc dtype), query, key_conv [N, A] (input dtype) and weight_acc
// [R, A] (acc dtype), writes d_query and d_key_conv ([N, A], input dtype, preallocated) and returns
// (d_weight [R, A], d_bias [R]) in the acc dtype. The weight/bias reduction is deterministic:
// fixed token tiles produce partials that are added in tile order (no dependence on threads).
using ParamGradsFn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& d_logits, const at::Tensor& query,
                                                            const at::Tensor& key_conv, const at::Tensor& weight_acc,
                                                            at::Tensor& d_query, at::Tensor& d_key_conv);

std::tuple<at::Tensor, at::Tensor> param_grads_cpu(const at::Tensor& d_logits, const at::Tensor& query,
                                                   const at::Tensor& key_conv, const at::Tensor& weight_acc,
                                                   at::Tensor& d_query, at::Tensor& d_key_conv);

#ifdef CONVBERT_WITH_CUDA
void window_forward_cuda(const at::Tensor& values, const at::Tensor& logits, const at::Tensor& mask,
                         int64_t num_heads, at::Tensor& out, at::Tensor& probs);
void window_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_probs, const at::Tensor& values,
                          const at::Tensor& probs, const at::Tensor& mask, int64_t num_heads,
                          at::Tensor& d_values, at::Tensor& d_logits);
std::tuple<at::Tensor, at::Tensor> param_grads_cuda(const at::Tensor& d_logits, const at::Tensor& query,
                                                    const at::Tensor& key_conv, const at::Tensor& weight_acc,
                                                    at::Tensor& d_query, at::Tensor& d_key_conv);
#endif

}  // namespace convbert_kernels
