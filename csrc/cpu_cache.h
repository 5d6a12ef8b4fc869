// The CPU's cache sizes the native CPU kernels tune to (shared by span_dynamic_conv_cpu.cpp and
// benchmarks/cpu_phases.cpp; no ATen, so the standalone benchmark needs nothing else).
#pragma once

#include <cstdint>
#include <cstdio>

namespace convbert_kernels {

// The size of CPU 0's L2 cache in bytes, from Linux's sysfs, or 1 MiB where it cannot be read.
// Outputs of half of it or more are written with streaming stores (span_dynamic_conv_cpu.cpp).
inline int64_t l2_cache_bytes() {
  for (int index = 0; index < 16; ++index) {
    char path[96];
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", index);
    std::FILE* f = std::fopen(path, "r");
    if (f == nullptr) break;
    int level = 0;
    const bool read_level = std::fscanf(f, "%d", &level) == 1;
    std::fclose(f);
    if (!read_level || level != 2) continue;
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
    f = std::fopen(path, "r");
    if (f == nullptr) break;
    long long size = 0;
    char unit = 0;  // "1024K", "2048K", "2M"
    const int fields = std::fscanf(f, "%lld%c", &size, &unit);
    std::fclose(f);
    if (fields >= 1 && size > 0 && size < (1LL << 40)) return size << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
  }
  return int64_t{1} << 20;
}

}  // namespace convbert_kernels
