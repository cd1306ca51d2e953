// Which copy of the CPU kernels runs: the build holds one per instruction-set variant
// (baseline x86-64, AVX2, AVX-512; or only "native" with STABLEREP_FAST_NATIVE=1), and the
// first call of cpu_kernels() picks the one the environment variable STABLEREP_FAST_CPU_VARIANT
// names (benchmarks: "avx2" on an AVX-512 machine), else the best one this CPU supports. The
// bindings call the kernels' entries through it: bindings.cpp -> cpu_kernels().<entry> (the
// copy's entry in multipos_cpu.cpp or finite.cpp, which checks its arguments) -> the kernel
// template.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "multipos/multipos.h"

namespace srf {

// One copy of the CPU kernels: the entry points declared in cpu_kernels.h.
struct CpuKernels {
  const char* name;
  bool (*supported)();
  void (*multipos_lse)(const MultiposProblem& p, DType dtype, void* lse_out);
  void (*multipos_weighted_sum)(const MultiposProblem& p, DType dtype, const void* u, const void* lse_a,
                                const void* v, const void* lse_b, void* out);
  bool (*all_finite)(const void* data, int64_t numel, DType dtype);
};

// The copy the kernels run on (picked on first use).
const CpuKernels& cpu_kernels();

// Its name.
std::string cpu_variant();

// Every variant in this build, best first, with whether this CPU can run it.
std::vector<std::pair<std::string, bool>> cpu_variants();

// Run the kernels on `name` from now on (tests); invalid_argument when it is not built or
// this CPU cannot run it.
void set_cpu_variant(const std::string& name);

}  // namespace srf
