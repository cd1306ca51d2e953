// The table of the CPU kernels' copies, one per instruction set, and the choice among them
// (see cpu_variants.h).
#include "cpu_variants.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if defined(SRF_CPU_NATIVE)
#define SRF_CPU_NS cpu_native
#include "cpu_kernels.h"
#undef SRF_CPU_NS
#endif
#if defined(SRF_CPU_AVX512)
#define SRF_CPU_NS cpu_avx512
#include "cpu_kernels.h"
#undef SRF_CPU_NS
#endif
#if defined(SRF_CPU_AVX2)
#define SRF_CPU_NS cpu_avx2
#include "cpu_kernels.h"
#undef SRF_CPU_NS
#endif
#if defined(SRF_CPU_BASELINE)
#define SRF_CPU_NS cpu_baseline
#include "cpu_kernels.h"
#undef SRF_CPU_NS
#endif

namespace srf {
namespace {

bool any_cpu() { return true; }

#if defined(__x86_64__) || defined(__i386__)
// Exactly the features CMakeLists.txt enables for each variant (libgcc also checks that the OS
// saves the wider registers).
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd");
}
#endif

#define SRF_VARIANT(label, ns, check) \
  CpuKernels { label, check, &ns::multipos_lse_cpu, &ns::multipos_weighted_sum_cpu, &ns::all_finite_cpu }

// Best first.
const CpuKernels kVariants[] = {
#if defined(SRF_CPU_NATIVE)
    SRF_VARIANT("native", cpu_native, any_cpu),  // built for the machine that compiled it
#endif
#if defined(SRF_CPU_AVX512)
    SRF_VARIANT("avx512", cpu_avx512, has_avx512),
#endif
#if defined(SRF_CPU_AVX2)
    SRF_VARIANT("avx2", cpu_avx2, has_avx2),
#endif
#if defined(SRF_CPU_BASELINE)
    SRF_VARIANT("baseline", cpu_baseline, any_cpu),
#endif
};

const CpuKernels* named(const std::string& name) {
  for (const CpuKernels& v : kVariants) {
    if (name != v.name) continue;
    if (!v.supported()) throw std::invalid_argument("CPU variant " + name + " does not run on this CPU");
    return &v;
  }
  throw std::invalid_argument("CPU variant " + name + " is not in this build");
}

// The variant STABLEREP_FAST_CPU_VARIANT names, else the best this CPU runs.
const CpuKernels* first_choice() {
  if (const char* name = std::getenv("STABLEREP_FAST_CPU_VARIANT"); name != nullptr && *name != '\0') {
    try {
      return named(name);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string(e.what()) + " (STABLEREP_FAST_CPU_VARIANT; unset it for the default)");
    }
  }
  for (const CpuKernels& v : kVariants)
    if (v.supported()) return &v;
  throw std::runtime_error("stablerep_fast: no CPU kernel variant in this build runs on this CPU");
}

std::atomic<const CpuKernels*> g_active{nullptr};

}  // namespace

const CpuKernels& cpu_kernels() {
  const CpuKernels* v = g_active.load(std::memory_order_acquire);
  if (v == nullptr) {
    v = first_choice();
    g_active.store(v, std::memory_order_release);
  }
  return *v;
}

std::string cpu_variant() { return cpu_kernels().name; }

std::vector<std::pair<std::string, bool>> cpu_variants() {
  std::vector<std::pair<std::string, bool>> out;
  for (const CpuKernels& v : kVariants) out.emplace_back(v.name, v.supported());
  return out;
}

void set_cpu_variant(const std::string& name) { g_active.store(named(name), std::memory_order_release); }

}  // namespace srf
