// Operator schemas (TORCH_LIBRARY) and their CPU / CUDA implementations (TORCH_LIBRARY_IMPL).
//
// Four ops in the namespace convbert_kernels, with the signatures of the Triton backend's
// triton_* ops (convbert_kernels/triton_backend.py):
//   native_span_fwd(query, key_conv, values, weight, bias?, num_heads, padding_l, padding_mask?, seq_bounds?,
//                   save_probs) -> (out, probs)
//   native_span_bwd(grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask?,
//                   seq_bounds?) -> (d_query, d_key_conv, d_values, d_weight, d_bias)
//   native_dynamic_fwd(values, logits, num_heads, padding_l, padding_mask?, seq_bounds?, save_probs)
//       -> (out, probs)
//   native_dynamic_bwd(grad_out, values, probs, num_heads, padding_l, padding_mask?, seq_bounds?)
//       -> (d_values, d_logits)
// Tap k of token t reads value t + k - padding_l, 0 <= padding_l <= K - 1 (the public Python ops
// resolve their default None to the centred (K - 1) / 2). probs is the softmaxed kernel,
// [B, L, n, K] in float32 (float64 for float64 inputs), returned for the backward; an empty [0]
// tensor when save_probs is false. seq_bounds (packed sequences, see span_dynamic_conv.h), int64
// [2, B * L]: row 0 the flattened index of the first token of each token's sequence, row 1 one past
// its last; only its dtype, shape and device are checked here (its contents would need a device
// sync; the Python layer builds it from validated cu_seqlens). Autograd and fake (meta)
// implementations are registered in Python (convbert_kernels/_compiled_ops.py, for this backend and
// the Triton one).
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "span_dynamic_conv.h"

namespace convbert_kernels {
namespace {

using at::Tensor;

struct DeviceKernels {
  decltype(&window_forward_cpu) forward;
  decltype(&window_backward_cpu) backward;
  decltype(&span_forward_cpu) span_forward;
  decltype(&span_backward_cpu) span_backward;
};

constexpr DeviceKernels kCpuKernels{window_forward_cpu, window_backward_cpu, span_forward_cpu, span_backward_cpu};
#ifdef CONVBERT_WITH_CUDA
constexpr DeviceKernels kCudaKernels{window_forward_cuda, window_backward_cuda, span_forward_cuda,
                                     span_backward_cuda};
#endif

void check_float(const Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
}

void check_like(const Tensor& t, const Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but values is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but values has ",
              ref.scalar_type());
}

// Returns K; checks values [B, L, C] against R = n * K columns.
int64_t check_heads(const Tensor& values, int64_t num_heads, int64_t R) {
  TORCH_CHECK(values.dim() == 3, "values must be [B, L, C], got ", values.sizes());
  TORCH_CHECK(num_heads >= 1, "num_heads must be positive, got ", num_heads);
  TORCH_CHECK(values.size(2) % num_heads == 0, "C=", values.size(2), " is not divisible by num_heads=", num_heads);
  TORCH_CHECK(R % num_heads == 0 && R / num_heads >= 1, "the kernel dimension ", R,
              " is not num_heads * K with K >= 1");
  return R / num_heads;
}

void check_padding_l(int64_t padding_l, int64_t K) {
  TORCH_CHECK(padding_l >= 0 && padding_l <= K - 1, "padding_l must be in [0, K - 1] = [0, ", K - 1, "] (K=", K,
              "), got ", padding_l);
}

Tensor prepare_mask(const std::optional<Tensor>& padding_mask, const Tensor& values) {
  if (!padding_mask.has_value() || !padding_mask->defined()) return Tensor();
  const Tensor& m = *padding_mask;
  TORCH_CHECK(m.dim() == 2 && m.size(0) == values.size(0) && m.size(1) == values.size(1),
              "padding_mask must be [B, L] = [", values.size(0), ", ", values.size(1), "], got ", m.sizes());
  TORCH_CHECK(m.device() == values.device(), "padding_mask is on ", m.device(), " but values is on ",
              values.device());
  return (m.scalar_type() == at::kBool ? m : m.ne(0)).contiguous();
}

// seq_bounds as the kernels read it: int64 [2, B * L] contiguous, or undefined when absent.
Tensor prepare_seq_bounds(const std::optional<Tensor>& seq_bounds, const Tensor& values) {
  if (!seq_bounds.has_value() || !seq_bounds->defined()) return Tensor();
  const Tensor& sb = *seq_bounds;
  TORCH_CHECK(sb.scalar_type() == at::kLong, "seq_bounds must be int64, got ", sb.scalar_type());
  const int64_t N = values.size(0) * values.size(1);
  TORCH_CHECK(sb.dim() == 2 && sb.size(0) == 2 && sb.size(1) == N, "seq_bounds must be [2, B*L] = [2, ", N,
              "], got ", sb.sizes());
  TORCH_CHECK(sb.device() == values.device(), "seq_bounds is on ", sb.device(), " but values is on ",
              values.device());
  return sb.contiguous();
}

const int64_t* seq_bounds_ptr(const Tensor& sb) { return sb.defined() ? sb.data_ptr<int64_t>() : nullptr; }

// probs as the forward returned it, [B, L, n, K], viewed as the kernels' [B, L, n * K].
Tensor check_probs(const Tensor& probs, const Tensor& values, int64_t num_heads, int64_t K) {
  TORCH_CHECK(probs.dim() == 4 && probs.size(0) == values.size(0) && probs.size(1) == values.size(1) &&
                  probs.size(2) == num_heads && probs.size(3) == K,
              "probs must be [B, L, n, K] = [", values.size(0), ", ", values.size(1), ", ", num_heads, ", ", K,
              "], got ", probs.sizes(), " (run the forward with save_probs=True)");
  TORCH_CHECK(probs.scalar_type() == acc_dtype_for(values.scalar_type()), "probs must be ",
              acc_dtype_for(values.scalar_type()), ", got ", probs.scalar_type());
  TORCH_CHECK(probs.device() == values.device(), "probs must be on the device of values");
  return probs.contiguous().view({values.size(0), values.size(1), num_heads * K});
}

// The probabilities to write: [B, L, n, K] in the accumulation dtype, or [0] when not saved.
Tensor new_probs(const Tensor& values, int64_t num_heads, int64_t K, bool save_probs) {
  const auto options = values.options().dtype(acc_dtype_for(values.scalar_type()));
  if (!save_probs) return at::empty({0}, options);
  return at::empty({values.size(0), values.size(1), num_heads, K}, options);
}

// The kernels' view of new_probs: [B, L, n * K], or undefined (they skip writing it).
Tensor kernel_probs(const Tensor& probs, const Tensor& values) {
  return probs.dim() == 4 ? probs.view({values.size(0), values.size(1), probs.size(2) * probs.size(3)}) : Tensor();
}

// Whether every token's logits row [b, t, :] is the same memory: a kernel shared by all positions,
// passed as an expanded view (strides (0, 0, 1), as LightweightConv1d does).
bool is_token_broadcast(const Tensor& logits) {
  return logits.size(0) >= 1 && logits.size(1) >= 1 && (logits.size(0) == 1 || logits.stride(0) == 0) &&
         (logits.size(1) == 1 || logits.stride(1) == 0);
}

std::tuple<Tensor, Tensor> dynamic_fwd(const DeviceKernels& k, const Tensor& values, const Tensor& logits,
                                       int64_t num_heads, int64_t padding_l,
                                       const std::optional<Tensor>& padding_mask,
                                       const std::optional<Tensor>& seq_bounds, bool save_probs) {
  check_float(values, "values");
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == values.size(0) && logits.size(1) == values.size(1),
              "logits must be [B, L, n*K] with the values' B and L");
  check_like(logits, values, "logits");
  const int64_t K = check_heads(values, num_heads, logits.size(2));
  check_padding_l(padding_l, K);
  const Tensor v = values.contiguous();
  const Tensor mask = prepare_mask(padding_mask, values);
  const Tensor sb = prepare_seq_bounds(seq_bounds, values);
  Tensor out = at::empty_like(v);
  Tensor probs = new_probs(v, num_heads, K, save_probs);
  Tensor probs_out = kernel_probs(probs, v);
  // A broadcast kernel goes down as its one row with token stride 0: contiguous() would copy it
  // B * L times.
  const bool broadcast = is_token_broadcast(logits);
  const Tensor lg = broadcast ? logits.select(0, 0).select(0, 0).contiguous() : logits.contiguous();
  k.forward(v, lg, broadcast ? 0 : logits.size(2), mask, seq_bounds_ptr(sb), num_heads, padding_l, out, probs_out);
  return {out, probs};
}

std::tuple<Tensor, Tensor> dynamic_bwd(const DeviceKernels& k, const Tensor& grad_out, const Tensor& values,
                                       const Tensor& probs, int64_t num_heads, int64_t padding_l,
                                       const std::optional<Tensor>& padding_mask,
                                       const std::optional<Tensor>& seq_bounds) {
  check_float(values, "values");
  TORCH_CHECK(probs.dim() == 4, "probs must be [B, L, n, K], got ", probs.sizes(),
              " (run the forward with save_probs=True)");
  const int64_t K = check_heads(values, num_heads, num_heads * probs.size(3));
  const Tensor p = check_probs(probs, values, num_heads, K);
  check_padding_l(padding_l, K);
  TORCH_CHECK(grad_out.sizes() == values.sizes(), "grad_out must have the shape of values");
  const Tensor v = values.contiguous();
  const Tensor g = grad_out.to(v.scalar_type()).contiguous();
  const Tensor mask = prepare_mask(padding_mask, values);
  const Tensor sb = prepare_seq_bounds(seq_bounds, values);
  Tensor d_values = at::empty_like(v);
  Tensor d_logits = at::empty(p.sizes(), v.options());
  k.backward(g, v, p, mask, seq_bounds_ptr(sb), num_heads, padding_l, d_values, d_logits);
  return {d_values, d_logits};
}

// Returns K.
int64_t check_span(const Tensor& query, const Tensor& key_conv, const Tensor& values, const Tensor& weight,
                   const std::optional<Tensor>& bias, int64_t num_heads, int64_t padding_l) {
  check_float(values, "values");
  TORCH_CHECK(query.dim() == 3 && query.sizes() == key_conv.sizes(), "query and key_conv must be [B, L, A]");
  TORCH_CHECK(query.size(0) == values.size(0) && query.size(1) == values.size(1),
              "query and values must share [B, L]");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == query.size(2), "weight must be [n*K, A]");
  check_like(query, values, "query");
  check_like(key_conv, values, "key_conv");
  check_like(weight, values, "weight");
  const int64_t K = check_heads(values, num_heads, weight.size(0));
  check_padding_l(padding_l, K);
  if (bias.has_value() && bias->defined()) {
    check_like(*bias, values, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be [n*K]");
  }
  return K;
}

std::tuple<Tensor, Tensor> span_fwd(const DeviceKernels& k, const Tensor& query, const Tensor& key_conv,
                                    const Tensor& values, const Tensor& weight, const std::optional<Tensor>& bias,
                                    int64_t num_heads, int64_t padding_l, const std::optional<Tensor>& padding_mask,
                                    const std::optional<Tensor>& seq_bounds, bool save_probs) {
  check_span(query, key_conv, values, weight, bias, num_heads, padding_l);
  const int64_t B = values.size(0), L = values.size(1), A = query.size(2), R = weight.size(0);
  const Tensor v = values.contiguous();
  const Tensor q = query.contiguous().view({B * L, A});
  const Tensor kc = key_conv.contiguous().view({B * L, A});
  const Tensor w = weight.contiguous();  // the input dtype: each device converts what it needs
  const Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : Tensor();
  const Tensor mask = prepare_mask(padding_mask, values);
  const Tensor sb = prepare_seq_bounds(seq_bounds, values);
  Tensor out = at::empty_like(v);
  Tensor probs = new_probs(v, num_heads, R / num_heads, save_probs);
  Tensor probs_out = kernel_probs(probs, v);
  k.span_forward(q, kc, v, w, b, mask, seq_bounds_ptr(sb), num_heads, padding_l, out, probs_out);
  return {out, probs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> span_bwd(const DeviceKernels& k, const Tensor& grad_out,
                                                            const Tensor& query, const Tensor& key_conv,
                                                            const Tensor& values, const Tensor& weight,
                                                            const Tensor& probs, int64_t num_heads,
                                                            int64_t padding_l,
                                                            const std::optional<Tensor>& padding_mask,
                                                            const std::optional<Tensor>& seq_bounds) {
  check_span(query, key_conv, values, weight, std::nullopt, num_heads, padding_l);
  const int64_t B = values.size(0), L = values.size(1), A = query.size(2), R = weight.size(0);
  const Tensor p = check_probs(probs, values, num_heads, R / num_heads);
  TORCH_CHECK(grad_out.sizes() == values.sizes(), "grad_out must have the shape of values");
  const auto dtype = values.scalar_type();
  const Tensor v = values.contiguous();
  const Tensor g = grad_out.to(dtype).contiguous();
  const Tensor mask = prepare_mask(padding_mask, values);
  const Tensor sb = prepare_seq_bounds(seq_bounds, values);
  const Tensor q = query.contiguous().view({B * L, A});
  const Tensor kc = key_conv.contiguous().view({B * L, A});
  Tensor d_values = at::empty_like(v);
  Tensor d_query = at::empty({B * L, A}, q.options());
  Tensor d_key_conv = at::empty({B * L, A}, q.options());
  auto [d_weight, d_bias] =
      k.span_backward(g, q, kc, v, weight.contiguous(), p, mask, seq_bounds_ptr(sb), num_heads, padding_l,
                      d_query, d_key_conv, d_values);
  return {d_query.view({B, L, A}), d_key_conv.view({B, L, A}), d_values, d_weight.to(dtype), d_bias.to(dtype)};
}

// The dispatcher's entry points: one instantiation per device's kernels.
template <const DeviceKernels* K>
std::tuple<Tensor, Tensor> native_span_fwd(const Tensor& query, const Tensor& key_conv, const Tensor& values,
                                           const Tensor& weight, const std::optional<Tensor>& bias, int64_t num_heads,
                                           int64_t padding_l, const std::optional<Tensor>& padding_mask,
                                           const std::optional<Tensor>& seq_bounds, bool save_probs) {
  return span_fwd(*K, query, key_conv, values, weight, bias, num_heads, padding_l, padding_mask, seq_bounds,
                  save_probs);
}

template <const DeviceKernels* K>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> native_span_bwd(const Tensor& grad_out, const Tensor& query,
                                                                   const Tensor& key_conv, const Tensor& values,
                                                                   const Tensor& weight, const Tensor& probs,
                                                                   int64_t num_heads, int64_t padding_l,
                                                                   const std::optional<Tensor>& padding_mask,
                                                                   const std::optional<Tensor>& seq_bounds) {
  return span_bwd(*K, grad_out, query, key_conv, values, weight, probs, num_heads, padding_l, padding_mask,
                  seq_bounds);
}

template <const DeviceKernels* K>
std::tuple<Tensor, Tensor> native_dynamic_fwd(const Tensor& values, const Tensor& logits, int64_t num_heads,
                                              int64_t padding_l, const std::optional<Tensor>& padding_mask,
                                              const std::optional<Tensor>& seq_bounds, bool save_probs) {
  return dynamic_fwd(*K, values, logits, num_heads, padding_l, padding_mask, seq_bounds, save_probs);
}

template <const DeviceKernels* K>
std::tuple<Tensor, Tensor> native_dynamic_bwd(const Tensor& grad_out, const Tensor& values, const Tensor& probs,
                                              int64_t num_heads, int64_t padding_l,
                                              const std::optional<Tensor>& padding_mask,
                                              const std::optional<Tensor>& seq_bounds) {
  return dynamic_bwd(*K, grad_out, values, probs, num_heads, padding_l, padding_mask, seq_bounds);
}

}  // namespace
}  // namespace convbert_kernels

TORCH_LIBRARY(convbert_kernels, m) {
  m.def(
      "native_span_fwd(Tensor query, Tensor key_conv, Tensor values, Tensor weight, Tensor? bias, int num_heads, "
      "int padding_l, Tensor? padding_mask, Tensor? seq_bounds, bool save_probs) -> (Tensor, Tensor)");
  m.def(
      "native_span_bwd(Tensor grad_out, Tensor query, Tensor key_conv, Tensor values, Tensor weight, Tensor probs, "
      "int num_heads, int padding_l, Tensor? padding_mask, Tensor? seq_bounds) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "native_dynamic_fwd(Tensor values, Tensor logits, int num_heads, int padding_l, Tensor? padding_mask, "
      "Tensor? seq_bounds, bool save_probs) -> (Tensor, Tensor)");
  m.def(
      "native_dynamic_bwd(Tensor grad_out, Tensor values, Tensor probs, int num_heads, int padding_l, "
      "Tensor? padding_mask, Tensor? seq_bounds) -> (Tensor, Tensor)");
}

#define CONVBERT_REGISTER_DEVICE(m, kernels)                                             \
  m.impl("native_span_fwd", &convbert_kernels::native_span_fwd<&kernels>);              \
  m.impl("native_span_bwd", &convbert_kernels::native_span_bwd<&kernels>);              \
  m.impl("native_dynamic_fwd", &convbert_kernels::native_dynamic_fwd<&kernels>);        \
  m.impl("native_dynamic_bwd", &convbert_kernels::native_dynamic_bwd<&kernels>)

TORCH_LIBRARY_IMPL(convbert_kernels, CPU, m) { CONVBERT_REGISTER_DEVICE(m, convbert_kernels::kCpuKernels); }

#ifdef CONVBERT_WITH_CUDA
TORCH_LIBRARY_IMPL(convbert_kernels, CUDA, m) { CONVBERT_REGISTER_DEVICE(m, convbert_kernels::kCudaKernels); }
#endif

// `import convbert_kernels._C` loads the library (and with it the registrations above).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "convbert_kernels native ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
