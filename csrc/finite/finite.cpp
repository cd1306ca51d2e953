// NaN/inf detection on raw memory: an element is non-finite when all its exponent bits are set.
// Compiled once per CPU variant, into namespace srf::SRF_CPU_NS (see cpu_kernels.h).
#include <cstring>

#include "cpu_kernels.h"

SRF_CPU_TARGET_BEGIN
namespace srf {
namespace SRF_CPU_NS {
namespace {

template <typename Bits>
bool exponent_never_saturated(const Bits* bits, int64_t numel, Bits exponent_mask) {
  int64_t bad = 0;
#if defined(SRF_WITH_OPENMP)
#pragma omp parallel for reduction(+ : bad) schedule(static) if (numel > (1 << 16))
#endif
  for (int64_t i = 0; i < numel; ++i) {
    bad += (bits[i] & exponent_mask) == exponent_mask;
  }
  return bad == 0;
}

}  // namespace

bool all_finite_cpu(const void* data, int64_t numel, DType dtype) {
  check_arg(numel >= 0, "all_finite: numel must be >= 0");
  check_arg(numel == 0 || data != nullptr, "all_finite: null data pointer");
  switch (dtype) {
    case DType::Float32:
      return exponent_never_saturated(static_cast<const uint32_t*>(data), numel, uint32_t{0x7F800000u});
    case DType::Float64:
      return exponent_never_saturated(static_cast<const uint64_t*>(data), numel,
                                      uint64_t{0x7FF0000000000000ull});
    case DType::Float16:
      return exponent_never_saturated(static_cast<const uint16_t*>(data), numel, uint16_t{0x7C00u});
    case DType::BFloat16:
      return exponent_never_saturated(static_cast<const uint16_t*>(data), numel, uint16_t{0x7F80u});
  }
  throw std::invalid_argument("all_finite: unsupported dtype");
}

}  // namespace SRF_CPU_NS
}  // namespace srf
SRF_CPU_TARGET_END
