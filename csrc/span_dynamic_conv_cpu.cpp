// CPU implementation of the window kernels and the deterministic weight gradient.
//
// The loops live in span_dynamic_conv_cpu_kernels.inc, compiled here three times (baseline,
// AVX2+FMA, AVX-512) with GCC's target pragmas; the widest one the CPU supports is chosen once at
// run time (CONVBERT_KERNELS_CPU_ISA=base|avx2|avx512|avx512bf16 overrides, for testing; avx512bf16
// is the AVX-512 build with vdpbf16ps for the bfloat16 GEMMs). The headers are
// all included before any target pragma, so no inline library code is compiled for a wider ISA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_cache.h"
#include "span_dynamic_conv.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CONVBERT_MULTI_ISA 1
#endif

#ifdef CONVBERT_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CONVBERT_ISA_VEC_BYTES 32
namespace convbert_kernels {
namespace cpu_avx2 {
#include "span_dynamic_conv_cpu_kernels.inc"
}  // namespace cpu_avx2
}  // namespace convbert_kernels
#undef CONVBERT_ISA_VEC_BYTES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")
#define CONVBERT_ISA_VEC_BYTES 64
namespace convbert_kernels {
namespace cpu_avx512 {
#include "span_dynamic_conv_cpu_kernels.inc"
}  // namespace cpu_avx512
}  // namespace convbert_kernels
#undef CONVBERT_ISA_VEC_BYTES
#pragma GCC pop_options
#endif

#define CONVBERT_ISA_VEC_BYTES 16
namespace convbert_kernels {
namespace cpu_base {
#include "span_dynamic_conv_cpu_kernels.inc"
}  // namespace cpu_base
#undef CONVBERT_ISA_VEC_BYTES

namespace {

// kAvx512Bf16: the AVX-512 kernels with vdpbf16ps for the bfloat16 GEMMs (AVX512_BF16).
enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

Isa detect_isa() {
  Isa best = Isa::kBase;
#ifdef CONVBERT_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    best = Isa::kAvx512;
    if (__builtin_cpu_supports("avx512bf16")) best = Isa::kAvx512Bf16;
  }
#endif
  if (const char* env = std::getenv("CONVBERT_KERNELS_CPU_ISA"); env != nullptr && *env != '\0') {
    Isa wanted;
    if (std::strcmp(env, "base") == 0) wanted = Isa::kBase;
    else if (std::strcmp(env, "avx2") == 0) wanted = Isa::kAvx2;
    else if (std::strcmp(env, "avx512") == 0) wanted = Isa::kAvx512;
    else if (std::strcmp(env, "avx512bf16") == 0) wanted = Isa::kAvx512Bf16;
    else TORCH_CHECK(false, "CONVBERT_KERNELS_CPU_ISA must be base, avx2, avx512 or avx512bf16 (or unset), got '",
                     env, "'");
    best = std::min(best, wanted);  // never more than the CPU has
  }
  return best;
}

Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

const bool* mask_ptr(const at::Tensor& mask) {
  return mask.defined() ? mask.data_ptr<bool>() : nullptr;
}

// Tokens per parallel work item. Fixed (not derived from the thread count), so every reduction
// over items has the same shape and order on any machine configuration.
constexpr int64_t kRange = 256;

int64_t num_ranges(int64_t N) { return (N + kRange - 1) / kRange; }

// Outputs of at least half this core's L2 cache are written with streaming stores (the kernels'
// store_stream): the op's inputs and scratch pass through the L2 after each output row is written,
// so the output would not be there for the op that reads it next anyway, and streaming saves reading
// each line before it is overwritten. Measured on one core of an AMD EPYC (1 MiB L2), fp32, B x 128
// tokens, A = C = 384, the op between elementwise producers and a consumer that read its outputs
// and gradients, against torch.compile of the eager backend in the same chain: streamed vs not,
// 1.50x vs 1.47x with 384 KiB outputs (B=2), 1.45x vs 1.37x with 768 KiB (B=4), 1.37x vs 1.29x with
// 1.5 MiB (B=8; the native chain 9% faster, four runs each); on an Intel Xeon (2 MiB L2) 1.5 MiB
// outputs streamed made no difference, 25 MiB ones (L=2048) were about 10% faster.
// CONVBERT_KERNELS_STREAM_BYTES overrides the size (tests stream their small outputs with 0).
int64_t stream_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("CONVBERT_KERNELS_STREAM_BYTES");
    if (env == nullptr) return l2_cache_bytes() / 2;
    // a number of bytes, whole: a typo must not silently become 0 (which streams every output)
    char* end = nullptr;
    errno = 0;
    const long long value = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && errno == 0 && value >= 0,
                "CONVBERT_KERNELS_STREAM_BYTES must be a non-negative whole number of bytes, got '", env, "'");
    return static_cast<int64_t>(value);
  }();
  return bytes;
}

bool streams(const at::Tensor& out) { return static_cast<int64_t>(out.nbytes()) >= stream_bytes(); }

// The ISA-specific instantiation of a kernel template (types deduced from the pointers), chosen
// at run time.
#ifdef CONVBERT_MULTI_ISA
#define CONVBERT_ISA_CALL(fn, ...)                                  \
  do {                                                              \
    switch (cpu_isa()) {                                            \
      case Isa::kAvx512Bf16:                                        \
      case Isa::kAvx512: cpu_avx512::fn(__VA_ARGS__); break;        \
      case Isa::kAvx2: cpu_avx2::fn(__VA_ARGS__); break;            \
      default: cpu_base::fn(__VA_ARGS__);                           \
    }                                                               \
  } while (0)
#else
#define CONVBERT_ISA_CALL(fn, ...) cpu_base::fn(__VA_ARGS__)
#endif

template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace

void window_forward_cpu(const at::Tensor& values, const at::Tensor& logits, int64_t logits_token_stride,
                        const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l,
                        at::Tensor& out, at::Tensor& probs) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, K = logits.size(-1) / n, N = B * L;  // logits [B, L, R] or one row [R]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "window_forward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    TORCH_CHECK(logits.scalar_type() == values.scalar_type(), "logits must have the values' dtype");
    const scalar_t* v = values.data_ptr<scalar_t>();
    const scalar_t* lg = logits.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    acc_t* p = probs.defined() ? probs.data_ptr<acc_t>() : nullptr;  // not saved: the kernel keeps them per token
    const bool* m = mask_ptr(mask);
    const int64_t* seq_lo = seq_bounds;  // rows 0 and 1 of seq_bounds [2, N], or nullptr
    const int64_t* seq_hi = seq_bounds != nullptr ? seq_bounds + N : nullptr;
    const bool stream_out = streams(out);
    at::parallel_for(0, num_ranges(N), 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n0 = r * kRange, n1 = std::min(N, n0 + kRange);
        CONVBERT_ISA_CALL(window_forward_range, v, lg, 0, logits_token_stride, m, seq_lo, seq_hi, o, p, L, n, d, K,
                          padding_l, n0, n1, stream_out);
      }
    });
  });
}

void window_backward_cpu(const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& probs,
                         const at::Tensor& mask, const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l,
                         at::Tensor& d_values, at::Tensor& d_logits) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, K = probs.size(2) / n, N = B * L;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "window_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    TORCH_CHECK(d_logits.scalar_type() == values.scalar_type(), "d_logits must have the values' dtype");
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    const acc_t* p = probs.data_ptr<acc_t>();
    scalar_t* dv = d_values.data_ptr<scalar_t>();
    scalar_t* dl = d_logits.data_ptr<scalar_t>();
    const bool* m = mask_ptr(mask);
    const int64_t* seq_lo = seq_bounds;  // rows 0 and 1 of seq_bounds [2, N], or nullptr
    const int64_t* seq_hi = seq_bounds != nullptr ? seq_bounds + N : nullptr;
    const bool stream_out = streams(d_values);
    at::parallel_for(0, num_ranges(N), 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n0 = r * kRange, n1 = std::min(N, n0 + kRange);
        CONVBERT_ISA_CALL(window_backward_range, g, v, p, m, seq_lo, seq_hi, dv, dl, 0, L, n, d, K, padding_l, n0,
                          n1, stream_out);
      }
    });
  });
}

// Columns padded to the small GEMM's multiple (span_dynamic_conv_cpu_kernels.inc).
int64_t gemm_padded(int64_t columns) {
  constexpr int64_t pad = cpu_base::kGemmPad;  // the same in every ISA's instantiation
  return (columns + pad - 1) / pad * pad;
}

// Per-thread scratch of `count` T: 64-byte aligned like PyTorch's tensors (rows of the GEMMs start
// on cache lines) and not zero-filled (every kernel writes its scratch before reading it).
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t count)
      : data_(static_cast<T*>(::operator new[](sizeof(T) * std::max<int64_t>(count, 1), std::align_val_t{64}))) {}
  ~Scratch() { ::operator delete[](data_, std::align_val_t{64}); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return data_; }

 private:
  T* data_;
};

// dst [rows, ld] = src [rows, cols] (transposed when `transpose`: src [cols, rows]) converted to
// acc_t, the columns [cols, ld) zero: the weight and bias in the layout the span kernels read,
// in one loop instead of zeros + narrow + a strided copy (a few ATen calls per op call).
template <typename scalar_t, typename acc_t>
void padded_copy(const scalar_t* src, acc_t* dst, int64_t rows, int64_t cols, int64_t ld, bool transpose) {
  if (!transpose) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) dst[r * ld + c] = static_cast<acc_t>(src[r * cols + c]);
    }
  } else {  // in 16 x 16 tiles, so the strided side of the transpose stays in L1
    constexpr int64_t kT = 16;
    for (int64_t c0 = 0; c0 < cols; c0 += kT) {
      for (int64_t r0 = 0; r0 < rows; r0 += kT) {
        for (int64_t c = c0; c < std::min(cols, c0 + kT); ++c) {
          for (int64_t r = r0; r < std::min(rows, r0 + kT); ++r) dst[r * ld + c] = static_cast<acc_t>(src[c * rows + r]);
        }
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = cols; c < ld; ++c) dst[r * ld + c] = acc_t(0);
  }
}

// The bfloat16 GEMMs' B operand (span_dynamic_conv_cpu_kernels.inc, bf16_gemm): dst[k / 2, c] holds
// b[k, c] in its low and b[k + 1, c] in its high 16 bits, b[k, c] = src[k * k_stride + c * c_stride]
// for k < Kd and c < Nc, zero beyond (k up to Kd rounded up to even, c up to ld).
void bf16_pairs(const c10::BFloat16* src, int64_t Kd, int64_t Nc, int64_t k_stride, int64_t c_stride,
                uint32_t* dst, int64_t ld) {
  const auto bits = [&](int64_t k, int64_t c) -> uint32_t {
    return k < Kd && c < Nc ? src[k * k_stride + c * c_stride].x : 0;
  };
  for (int64_t k = 0; k < Kd; k += 2) {
    for (int64_t c = 0; c < ld; ++c) dst[k / 2 * ld + c] = bits(k, c) | bits(k + 1, c) << 16;
  }
}

// The fused CPU forward: one parallel region over fixed ranges of kRange tokens; per range the
// product query * key_conv, the A -> n*K projection, softmax and the window sum, all in per-thread
// scratch that stays in cache. The weight is converted and transposed once, [A, Rp] with R padded.
void span_forward_cpu(const at::Tensor& query, const at::Tensor& key_conv, const at::Tensor& values,
                      const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mask,
                      const int64_t* seq_bounds, int64_t num_heads, int64_t padding_l, at::Tensor& out,
                      at::Tensor& probs) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2), A = query.size(1);
  const int64_t n = num_heads, d = C / n, R = weight.size(0), K = R / n, N = B * L, Rp = gemm_padded(R);
  const auto acc = acc_dtype_for(values.scalar_type());
  // bfloat16 takes the projection in bfloat16 pairs (A2 = A rounded up to even), the others in acc
  const bool bf16 = values.scalar_type() == at::kBFloat16;
  const int64_t A2 = A + A % 2;
  at::Tensor weight_t = at::empty({bf16 ? 0 : A, Rp}, values.options().dtype(acc));
  at::Tensor weight_pairs = at::empty({bf16 ? A2 / 2 : 0, Rp}, values.options().dtype(at::kInt));
  at::Tensor bias_p = bias.defined() ? at::empty({Rp}, weight_t.options()) : at::Tensor();
  const bool bf16_dp = cpu_isa() == Isa::kAvx512Bf16;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "span_forward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    uint32_t* wpairs = reinterpret_cast<uint32_t*>(weight_pairs.data_ptr<int32_t>());
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      bf16_pairs(weight.data_ptr<c10::BFloat16>(), A, R, /*k_stride=*/1, /*c_stride=*/A, wpairs, Rp);
    } else {
      padded_copy(weight.data_ptr<scalar_t>(), weight_t.data_ptr<acc_t>(), A, R, Rp, /*transpose=*/true);
    }
    if (bias.defined()) padded_copy(bias.data_ptr<scalar_t>(), bias_p.data_ptr<acc_t>(), 1, R, Rp, false);
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* kc = key_conv.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    const acc_t* wt = weight_t.data_ptr<acc_t>();  // empty for bfloat16
    const acc_t* bp = bias_p.defined() ? bias_p.data_ptr<acc_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    acc_t* p = probs.defined() ? probs.data_ptr<acc_t>() : nullptr;  // not saved: the kernel keeps them per token
    const bool* m = mask_ptr(mask);
    const int64_t* seq_lo = seq_bounds;  // rows 0 and 1 of seq_bounds [2, N], or nullptr
    const int64_t* seq_hi = seq_bounds != nullptr ? seq_bounds + N : nullptr;
    const bool stream_out = streams(out);
    at::parallel_for(0, num_ranges(N), 1, [&](int64_t begin, int64_t end) {
      constexpr int64_t kSub = cpu_base::kSubRange;  // the same in every ISA's instantiation
      const int64_t sub = std::min(kSub, N);
      Scratch<acc_t> ca(bf16 ? 0 : sub * A), logits(sub * Rp);
      Scratch<c10::BFloat16> ca_bf16(bf16 ? sub * A2 : 0);
      const int64_t last_token = std::min(N, end * kRange);  // this thread's tokens end there
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n0 = r * kRange, n1 = std::min(N, n0 + kRange);
        CONVBERT_ISA_CALL(span_forward_range, q, kc, v, wt, bp, m, seq_lo, seq_hi, o, p, L, n, d, K, A, Rp,
                          padding_l, n0, n1, last_token, ca.data(), logits.data(), stream_out, wpairs,
                          ca_bf16.data(), bf16_dp);
      }
    });
  });
}

// The fused CPU backward: one parallel region over the same fixed ranges; per range the window
// backward (d_values, d_logits of the range), d_ca = d_logits @ W, d_query = d_ca * key_conv,
// d_key_conv = d_ca * query, and the range's partial d_weight = d_logits^T (query * key_conv),
// d_bias = column sums of d_logits. The partials are added in range order afterwards: the result
// does not depend on the number of threads or on which thread ran which range.
std::tuple<at::Tensor, at::Tensor> span_backward_cpu(const at::Tensor& grad_out, const at::Tensor& query,
                                                     const at::Tensor& key_conv, const at::Tensor& values,
                                                     const at::Tensor& weight, const at::Tensor& probs,
                                                     const at::Tensor& mask, const int64_t* seq_bounds,
                                                     int64_t num_heads, int64_t padding_l, at::Tensor& d_query,
                                                     at::Tensor& d_key_conv, at::Tensor& d_values) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2), A = query.size(1);
  const int64_t n = num_heads, d = C / n, R = weight.size(0), K = R / n, N = B * L, Ap = gemm_padded(A);
  const auto acc = acc_dtype_for(values.scalar_type());
  const auto acc_options = values.options().dtype(acc);
  if (N == 0) return {at::zeros({R, A}, acc_options), at::zeros({R}, acc_options)};
  const int64_t ranges = num_ranges(N);
  // bfloat16 takes d_ca in bfloat16 pairs (R2 = R rounded up to even), the others in acc
  const bool bf16 = values.scalar_type() == at::kBFloat16;
  const int64_t R2 = R + R % 2;
  at::Tensor weight_p = at::empty({bf16 ? 0 : R, Ap}, acc_options);
  at::Tensor weight_pairs = at::empty({bf16 ? R2 / 2 : 0, Ap}, values.options().dtype(at::kInt));
  const bool bf16_dp = cpu_isa() == Isa::kAvx512Bf16;
  // every range writes its partials in full (span_backward_range)
  at::Tensor dw_part = at::empty({ranges, R, Ap}, acc_options);
  at::Tensor db_part = at::empty({ranges, R}, acc_options);
  at::Tensor d_weight = at::empty({R, A}, acc_options), d_bias = at::empty({R}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "span_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    uint32_t* wpairs = reinterpret_cast<uint32_t*>(weight_pairs.data_ptr<int32_t>());
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      bf16_pairs(weight.data_ptr<c10::BFloat16>(), R, A, /*k_stride=*/A, /*c_stride=*/1, wpairs, Ap);
    } else {
      padded_copy(weight.data_ptr<scalar_t>(), weight_p.data_ptr<acc_t>(), R, A, Ap, /*transpose=*/false);
    }
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* kc = key_conv.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    const acc_t* wp = weight_p.data_ptr<acc_t>();  // empty for bfloat16
    const acc_t* p = probs.data_ptr<acc_t>();
    scalar_t* dv = d_values.data_ptr<scalar_t>();
    scalar_t* dq = d_query.data_ptr<scalar_t>();
    scalar_t* dkc = d_key_conv.data_ptr<scalar_t>();
    acc_t* dw = dw_part.data_ptr<acc_t>();
    acc_t* db = db_part.data_ptr<acc_t>();
    const bool* m = mask_ptr(mask);
    const int64_t* seq_lo = seq_bounds;  // rows 0 and 1 of seq_bounds [2, N], or nullptr
    const int64_t* seq_hi = seq_bounds != nullptr ? seq_bounds + N : nullptr;
    const bool stream_out = streams(d_values);
    at::parallel_for(0, num_ranges(N), 1, [&](int64_t begin, int64_t end) {
      const int64_t tokens = std::min(kRange, N), sub = std::min(cpu_base::kSubRange, N);
      Scratch<acc_t> dl(tokens * R), ca(tokens * Ap), d_ca(sub * Ap);
      // bfloat16: d_logits rows of a sub-range, then transposed for the range (span_backward_range)
      Scratch<c10::BFloat16> dl_bf16(bf16 ? cpu_base::kSubRange * R2 + R * (tokens + 1) : 0);
      const int64_t last_token = std::min(N, end * kRange);  // this thread's tokens end there
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n0 = r * kRange, n1 = std::min(N, n0 + kRange);
        CONVBERT_ISA_CALL(span_backward_range, g, q, kc, v, wp, p, m, seq_lo, seq_hi, dv, dq, dkc, dw + r * R * Ap,
                          db + r * R, L, n, d, K, A, Ap, padding_l, n0, n1, last_token, dl.data(), ca.data(),
                          d_ca.data(), stream_out, wpairs, dl_bf16.data(), bf16_dp);
      }
    });
    // the ranges' partials added in range order (the same sums for any thread count)
    acc_t* d_w = d_weight.data_ptr<acc_t>();
    acc_t* d_b = d_bias.data_ptr<acc_t>();
    for (int64_t i = 0; i < R; ++i) {
      for (int64_t a = 0; a < A; ++a) d_w[i * A + a] = dw[i * Ap + a];
      d_b[i] = db[i];
    }
    for (int64_t r = 1; r < ranges; ++r) {
      for (int64_t i = 0; i < R; ++i) {
        const acc_t* part = dw + (r * R + i) * Ap;
        for (int64_t a = 0; a < A; ++a) d_w[i * A + a] += part[a];
        d_b[i] += db[r * R + i];
      }
    }
  });
  return {d_weight, d_bias};
}

}  // namespace convbert_kernels
