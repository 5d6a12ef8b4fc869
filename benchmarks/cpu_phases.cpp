// Where the native CPU span op spends its time: the kernels of csrc/span_dynamic_conv_cpu_kernels.inc
// run over all ranges of a [B, L] batch on one thread, with the phase hooks of that file defined
// here, so each phase's time is summed (the forward's product q * kc, projection GEMM, softmax +
// window sum; the backward's window backward, d_ca GEMM, one pass for ca / d_query / d_key_conv, d_weight
// GEMM + d_bias). No PyTorch calls, no Python, outputs allocated once: what is left is the kernels
// and the memory they touch. fp32; the widest instruction set the CPU has (as the extension).
//
// Build and run: scripts/cpu_phases.sh [--batch B] [--seq-len L] [--dims A,C,n,K] [--rounds N]
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../csrc/cpu_cache.h"

#if defined(__x86_64__)
#include <immintrin.h>  // the kernels' streaming stores
#endif

namespace phases {
// this thread's CPU time, as the totals (a hook costs about 0.3 us: about 1% of a range's work)
double now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}
double seconds[7], last;
const char* const kNames[7] = {"forward: product q * kc",      "forward: projection GEMM (+ bias)",
                               "forward: softmax + window sum", "backward: window backward",
                               "backward: d_ca GEMM",          "backward: ca, d_query, d_key_conv (one pass)",
                               "backward: d_weight GEMM + d_bias"};
}  // namespace phases

#define CONVBERT_PHASE_START() (phases::last = phases::now())
#define CONVBERT_PHASE(i)                       \
  do {                                          \
    const double now_ = phases::now();          \
    phases::seconds[i] += now_ - phases::last;  \
    phases::last = now_;                        \
  } while (0)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MULTI_ISA 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")
#define CONVBERT_ISA_VEC_BYTES 64
namespace isa_avx512 {
#include "../csrc/span_dynamic_conv_cpu_kernels.inc"
}
#undef CONVBERT_ISA_VEC_BYTES
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CONVBERT_ISA_VEC_BYTES 32
namespace isa_avx2 {
#include "../csrc/span_dynamic_conv_cpu_kernels.inc"
}
#undef CONVBERT_ISA_VEC_BYTES
#pragma GCC pop_options
#endif
#define CONVBERT_ISA_VEC_BYTES 16
namespace isa_base {
#include "../csrc/span_dynamic_conv_cpu_kernels.inc"
}
#undef CONVBERT_ISA_VEC_BYTES

namespace {

// 64-byte aligned storage, as PyTorch's CPU allocator gives the extension (unaligned rows cost the
// vector loads a cache-line split each: about 1.5x on the whole op)
template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t count) {
    void* p = std::aligned_alloc(64, (count * sizeof(T) + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const Aligned64&) const { return true; }
  bool operator!=(const Aligned64&) const { return false; }
};
using Buffer = std::vector<float, Aligned64<float>>;

int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
  }
  return fallback;
}

// The span kernels of one instruction set's instantiation (its namespace above), as a type.
template <int kIsa>
struct Kernels;
#define PHASES_KERNELS(isa, ns, name)                                                        \
  template <>                                                                              \
  struct Kernels<isa> {                                                                    \
    static constexpr const char* kName = name;                                             \
    template <typename... Args>                                                            \
    static void forward(Args... a) { ns::span_forward_range(a...); }                       \
    template <typename... Args>                                                            \
    static void backward(Args... a) { ns::span_backward_range(a...); }                     \
    static constexpr int64_t kPad = ns::kGemmPad, kSub = ns::kSubRange;                    \
  };
#ifdef MULTI_ISA
PHASES_KERNELS(2, isa_avx512, "avx512")
PHASES_KERNELS(1, isa_avx2, "avx2")
#endif
PHASES_KERNELS(0, isa_base, "base")
#undef PHASES_KERNELS

template <int kIsa>
int run(int argc, char** argv) {
  using KK = Kernels<kIsa>;
  std::vector<int64_t> dims = {384, 384, 6, 9};
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--dims") == 0) {
      dims.clear();
      for (const char* p = argv[i + 1]; *p;) {
        dims.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
        if (*p == ',') ++p;
      }
    }
  }
  if (dims.size() != 4 || dims[2] < 1 || dims[3] < 1 || dims[1] % dims[2] != 0) {
    std::fprintf(stderr, "--dims must be A,C,n,K with C divisible by n\n");
    return 2;
  }
  const int64_t B = arg(argc, argv, "--batch", 8), L = arg(argc, argv, "--seq-len", 512);
  const int64_t rounds = arg(argc, argv, "--rounds", 10);
  const int64_t A = dims[0], C = dims[1], n = dims[2], K = dims[3], d = C / n, R = n * K, N = B * L;
  const int64_t pl = (K - 1) / 2, kRange = 256;
  const int64_t Rp = (R + KK::kPad - 1) / KK::kPad * KK::kPad, Ap = (A + KK::kPad - 1) / KK::kPad * KK::kPad;
  if (B < 1 || L < 1 || rounds < 1) {
    std::fprintf(stderr, "--batch, --seq-len and --rounds must be positive\n");
    return 2;
  }
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  auto random = [&](int64_t count, float scale) {
    Buffer x(count);
    for (auto& e : x) e = normal(rng) * scale;
    return x;
  };
  const auto q = random(N * A, 1), kc = random(N * A, 1), v = random(N * C, 1), g = random(N * C, 1);
  const auto w = random(R * A, 1 / std::sqrt(static_cast<float>(A))), bias = random(R, 0.1f);
  // the layouts span_dynamic_conv_cpu.cpp prepares: weight transposed [A, Rp], padded [R, Ap]
  Buffer weight_t(A * Rp, 0), bias_p(Rp, 0), weight_p(R * Ap, 0);
  for (int64_t r = 0; r < R; ++r) {
    bias_p[r] = bias[r];
    for (int64_t a = 0; a < A; ++a) weight_t[a * Rp + r] = weight_p[r * Ap + a] = w[r * A + a];
  }
  const int64_t ranges = (N + kRange - 1) / kRange;
  Buffer out(N * C), probs(N * R), dq(N * A), dkc(N * A), dv(N * C);
  Buffer dw(ranges * R * Ap), db(ranges * R);
  Buffer ca(kRange * Ap), logits(KK::kSub * Rp), dl(kRange * R), d_ca(KK::kSub * Ap);
  const bool* no_mask = nullptr;
  const int64_t* no_bounds = nullptr;
  // streaming stores for outputs of half the L2 or more, as the extension (stream_bytes there)
  const bool stream = N * C * static_cast<int64_t>(sizeof(float)) >= convbert_kernels::l2_cache_bytes() / 2;
  double forward_s = 0, backward_s = 0;
  for (int64_t round = -1; round < rounds; ++round) {  // round -1: warm-up, not counted
    if (round == 0) std::fill(std::begin(phases::seconds), std::end(phases::seconds), 0.0);
    const double t0 = phases::now();
    for (int64_t r = 0; r < ranges; ++r) {
      const int64_t n0 = r * kRange, n1 = std::min(N, n0 + kRange);
      KK::forward(q.data(), kc.data(), v.data(), weight_t.data(), bias_p.data(), no_mask, no_bounds, no_bounds,
                  out.data(), probs.data(), L, n, d, K, A, Rp, pl, n0, n1, N, ca.data(), logits.data(), stream);
    }
    const double t1 = phases::now();
    for (int64_t r = 0; r < ranges; ++r) {
      const int64_t n0 = r * kRange, n1 = std::min(N, n0 + kRange);
      KK::backward(g.data(), q.data(), kc.data(), v.data(), weight_p.data(), probs.data(), no_mask, no_bounds,
                   no_bounds, dv.data(), dq.data(), dkc.data(), dw.data() + r * R * Ap, db.data() + r * R, L, n, d,
                   K, A, Ap, pl, n0, n1, N, dl.data(), ca.data(), d_ca.data(), stream);
    }
    const double t2 = phases::now();
    if (round >= 0) {
      forward_s += t1 - t0;
      backward_s += t2 - t1;
    }
  }
  double checksum = 0;  // keeps the outputs live, and says the kernels computed something
  for (const auto* x : {&out, &dv, &dq, &dkc, &dw}) {
    for (float e : *x) checksum += std::fabs(e);
  }
  const double per_call_ms = 1e3 / rounds, per_token_us = 1e6 / rounds / N;
  std::printf("span op kernels, fp32, one thread, %s: B=%lld L=%lld A=%lld C=%lld n=%lld K=%lld, %lld rounds\n",
              KK::kName, (long long)B, (long long)L, (long long)A, (long long)C, (long long)n, (long long)K,
              (long long)rounds);
  std::printf("| phase | ms per call | us per token | share |\n|---|---|---|---|\n");
  const double total_s = forward_s + backward_s;
  for (int i = 0; i < 7; ++i) {
    std::printf("| %s | %.3f | %.3f | %.0f%% |\n", phases::kNames[i], phases::seconds[i] * per_call_ms,
                phases::seconds[i] * per_token_us, 100 * phases::seconds[i] / total_s);
  }
  std::printf("| forward (thread CPU time) | %.3f | %.3f | |\n", forward_s * per_call_ms, forward_s * per_token_us);
  std::printf("| backward (thread CPU time) | %.3f | %.3f | |\n", backward_s * per_call_ms,
              backward_s * per_token_us);
  std::printf("checksum %.6e\n", checksum);
  return std::isfinite(checksum) && checksum > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
#ifdef MULTI_ISA
  __builtin_cpu_init();
  // as the extension: base, avx2, avx512 or avx512bf16 (the same fp32 kernels as avx512 here)
  const char* wanted = std::getenv("CONVBERT_KERNELS_CPU_ISA");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  const std::string w = wanted ? wanted : "avx512";
  if (avx512 && (w == "avx512" || w == "avx512bf16")) return run<2>(argc, argv);
  if (avx2 && w != "base") return run<1>(argc, argv);
#endif
  return run<0>(argc, argv);
}
