// Which copy of the CPU kernels runs: the build holds one per instruction-set variant
// (baseline x86-64, AVX2, AVX-512; or only "native" with STABLEREP_FAST_NATIVE=1), and the
// first call picks the best one this CPU supports (srf::multipos_lse_cpu and the other entry
// points of multipos.h and finite.h dispatch to it).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace srf {

// The variant the CPU kernels run on (picked on first use).
std::string cpu_variant();

// Every variant in this build, best first, with whether this CPU can run it.
std::vector<std::pair<std::string, bool>> cpu_variants();

// Run the kernels on `name` from now on (tests); invalid_argument when it is not built or
// this CPU cannot run it.
void set_cpu_variant(const std::string& name);

}  // namespace srf
