// CPU implementation of the window kernels and the deterministic weight gradient.
//
// The loops live in span_dynamic_conv_cpu_kernels.inc, compiled here three times (baseline,
// AVX2+FMA, AVX-512) with GCC's target pragmas; the widest one the CPU supports is chosen once at
// run time (CONVBERT_KERNELS_CPU_ISA=base|avx2|avx512 overrides, for testing). The headers are
// all included before any target pragma, so no inline library code is compiled for a wider ISA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "span_dynamic_conv.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CONVBERT_MULTI_ISA 1
#endif

#ifdef CONVBERT_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace convbert_kernels {
namespace cpu_avx2 {
#include "span_dynamic_conv_cpu_kernels.inc"
}  // namespace cpu_avx2
}  // namespace convbert_kernels
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")
namespace convbert_kernels {
namespace cpu_avx512 {
#include "span_dynamic_conv_cpu_kernels.inc"
}  // namespace cpu_avx512
}  // namespace convbert_kernels
#pragma GCC pop_options
#endif

namespace convbert_kernels {
namespace cpu_base {
#include "span_dynamic_conv_cpu_kernels.inc"
}  // namespace cpu_base

namespace {

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detect_isa() {
  Isa best = Isa::kBase;
#ifdef CONVBERT_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    best = Isa::kAvx512;
  }
#endif
  if (const char* env = std::getenv("CONVBERT_KERNELS_CPU_ISA")) {
    Isa wanted = best;
    if (std::strcmp(env, "base") == 0) wanted = Isa::kBase;
    else if (std::strcmp(env, "avx2") == 0) wanted = Isa::kAvx2;
    else if (std::strcmp(env, "avx512") == 0) wanted = Isa::kAvx512;
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

}  // namespace

void window_forward_cpu(const at::Tensor& values, const at::Tensor& logits, const at::Tensor& mask,
                        int64_t num_heads, at::Tensor& out, at::Tensor& probs) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, K = logits.size(2) / n;
  const bool logits_acc = logits.scalar_type() != values.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "window_forward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    TORCH_CHECK(probs.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "probs must be the accumulation dtype");
    auto run = [&](auto logit_tag) {
      using logit_t = decltype(logit_tag);
      TORCH_CHECK(logits.scalar_type() == c10::CppTypeToScalarType<logit_t>::value, "unexpected logits dtype");
      const scalar_t* v = values.data_ptr<scalar_t>();
      const logit_t* lg = logits.data_ptr<logit_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      acc_t* p = probs.data_ptr<acc_t>();
      switch (cpu_isa()) {
#ifdef CONVBERT_MULTI_ISA
        case Isa::kAvx512:
          cpu_avx512::window_forward<scalar_t, acc_t, logit_t>(v, lg, mask_ptr(mask), o, p, B, L, n, d, K);
          break;
        case Isa::kAvx2:
          cpu_avx2::window_forward<scalar_t, acc_t, logit_t>(v, lg, mask_ptr(mask), o, p, B, L, n, d, K);
          break;
#endif
        default:
          cpu_base::window_forward<scalar_t, acc_t, logit_t>(v, lg, mask_ptr(mask), o, p, B, L, n, d, K);
      }
    };
    if (logits_acc) {
      run(acc_t{});
    } else {
      run(scalar_t{});
    }
  });
}

void window_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_probs, const at::Tensor& values,
                         const at::Tensor& probs, const at::Tensor& mask, int64_t num_heads, at::Tensor& d_values,
                         at::Tensor& d_logits) {
  const int64_t B = values.size(0), L = values.size(1), C = values.size(2);
  const int64_t n = num_heads, d = C / n, K = probs.size(2) / n;
  const bool dlogits_acc = d_logits.scalar_type() != values.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "window_backward_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto run = [&](auto dlogit_tag) {
      using dlogit_t = decltype(dlogit_tag);
      TORCH_CHECK(d_logits.scalar_type() == c10::CppTypeToScalarType<dlogit_t>::value, "unexpected d_logits dtype");
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      const acc_t* gp = grad_probs.defined() ? grad_probs.data_ptr<acc_t>() : nullptr;
      const scalar_t* v = values.data_ptr<scalar_t>();
      const acc_t* p = probs.data_ptr<acc_t>();
      scalar_t* dv = d_values.data_ptr<scalar_t>();
      dlogit_t* dl = d_logits.data_ptr<dlogit_t>();
      switch (cpu_isa()) {
#ifdef CONVBERT_MULTI_ISA
        case Isa::kAvx512:
          cpu_avx512::window_backward<scalar_t, acc_t, dlogit_t>(g, gp, v, p, mask_ptr(mask), dv, dl, B, L, n, d, K);
          break;
        case Isa::kAvx2:
          cpu_avx2::window_backward<scalar_t, acc_t, dlogit_t>(g, gp, v, p, mask_ptr(mask), dv, dl, B, L, n, d, K);
          break;
#endif
        default:
          cpu_base::window_backward<scalar_t, acc_t, dlogit_t>(g, gp, v, p, mask_ptr(mask), dv, dl, B, L, n, d, K);
      }
    };
    if (dlogits_acc) {
      run(acc_t{});
    } else {
      run(scalar_t{});
    }
  });
}

// Per fixed tile of kParamTile tokens (so the tile's rows stay in cache): d_ca = d_logits @ W,
// d_query = d_ca * key_conv, d_key_conv = d_ca * query, and the tile's partial
// d_weight = d_logits^T (query * key_conv), d_bias = column sums of d_logits. The GEMMs are
// single-threaded MKL calls inside the parallel region; the partials are added in tile order,
// so the result does not depend on the number of threads or on which thread ran which tile.
std::tuple<at::Tensor, at::Tensor> param_grads_cpu(const at::Tensor& d_logits, const at::Tensor& query,
                                                   const at::Tensor& key_conv, const at::Tensor& weight_acc,
                                                   at::Tensor& d_query, at::Tensor& d_key_conv) {
  constexpr int64_t kParamTile = 256;
  const int64_t N = d_logits.size(0), R = d_logits.size(1), A = query.size(1);
  const auto acc = d_logits.scalar_type();
  const int64_t tiles = std::max<int64_t>(1, (N + kParamTile - 1) / kParamTile);
  at::Tensor dw_part = at::zeros({tiles, R, A}, d_logits.options());
  at::Tensor db_part = at::zeros({tiles, R}, d_logits.options());
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    // OpenMP workers do not inherit the caller's dispatch state: keep these ATen calls below
    // autograd there too (the saved inputs may require grad).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kParamTile, len = std::min(N, n0 + kParamTile) - n0;
      if (len <= 0) continue;
      const at::Tensor dl = d_logits.narrow(0, n0, len);
      const at::Tensor q = query.narrow(0, n0, len).to(acc);
      const at::Tensor kc = key_conv.narrow(0, n0, len).to(acc);
      const at::Tensor d_ca = at::mm(dl, weight_acc);
      at::Tensor dq = d_query.narrow(0, n0, len), dkc = d_key_conv.narrow(0, n0, len);
      if (dq.scalar_type() == acc) {  // straight into the output, no temporary
        at::mul_out(dq, d_ca, kc);
        at::mul_out(dkc, d_ca, q);
      } else {
        dq.copy_(d_ca * kc);
        dkc.copy_(d_ca * q);
      }
      at::Tensor dw_out = dw_part.select(0, tile);
      at::mm_out(dw_out, dl.t(), q * kc);
      db_part.select(0, tile).copy_(dl.sum(0));
    }
  });
  at::Tensor dw = dw_part.select(0, 0).clone();
  at::Tensor db = db_part.select(0, 0).clone();
  for (int64_t tile = 1; tile < tiles; ++tile) {
    dw.add_(dw_part.select(0, tile));
    db.add_(db_part.select(0, tile));
  }
  return {dw, db};
}

}  // namespace convbert_kernels
