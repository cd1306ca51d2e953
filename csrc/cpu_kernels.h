// The CPU kernels of one instruction-set variant, declared in namespace srf::SRF_CPU_NS.
//
// The kernel sources (multipos/multipos_cpu.cpp, finite/finite.cpp) are compiled once per
// variant with SRF_CPU_NS=cpu_<variant> and SRF_CPU_TARGET="<instruction sets>"
// (CMakeLists.txt), so each copy has its own symbols; cpu_variants.cpp includes this header
// once per variant built and calls the copy that the CPU can run. No include guard: meant to
// be included once per namespace.
//
// The instruction sets apply only between SRF_CPU_TARGET_BEGIN and SRF_CPU_TARGET_END, which
// a kernel source puts after its #includes, around its own namespace. Compiling the whole
// file with -mavx512f instead would also compile the inline functions and templates of the
// headers (std::vector's, say) with AVX-512; the linker keeps one copy of each, so the
// baseline kernels could end up calling an AVX-512 copy on a CPU without it.
#include <cstdint>

#include "common.h"
#include "multipos/multipos.h"

#if !defined(SRF_CPU_NS)
#error "define SRF_CPU_NS (the variant's namespace) before including cpu_kernels.h"
#endif

#define SRF_PRAGMA(x) _Pragma(#x)
#if !defined(SRF_CPU_TARGET)
#define SRF_CPU_TARGET_BEGIN
#define SRF_CPU_TARGET_END
#elif defined(__clang__)
#define SRF_CPU_TARGET_PRAGMA(t) SRF_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define SRF_CPU_TARGET_BEGIN SRF_CPU_TARGET_PRAGMA(SRF_CPU_TARGET)
#define SRF_CPU_TARGET_END SRF_PRAGMA(clang attribute pop)
#else
#define SRF_CPU_TARGET_PRAGMA(t) SRF_PRAGMA(GCC target(t))
#define SRF_CPU_TARGET_BEGIN SRF_PRAGMA(GCC push_options) SRF_CPU_TARGET_PRAGMA(SRF_CPU_TARGET)
#define SRF_CPU_TARGET_END SRF_PRAGMA(GCC pop_options)
#endif

namespace srf {
namespace SRF_CPU_NS {

// The two kernels of multipos.h on the host: float32 or float64 inputs, results in that dtype.
// Each checks its arguments, then calls its kernel template for the dtype.
void multipos_lse_cpu(const MultiposProblem& p, DType dtype, void* lse_out);

void multipos_weighted_sum_cpu(const MultiposProblem& p, DType dtype, const void* u, const void* lse_a,
                               const void* v, const void* lse_b, void* out);

// True when none of the `numel` contiguous elements at `data` is NaN or +-inf (finite/finite.cpp).
bool all_finite_cpu(const void* data, int64_t numel, DType dtype);

}  // namespace SRF_CPU_NS
}  // namespace srf
