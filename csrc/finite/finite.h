#pragma once

#include <cstdint>

#include "common.h"

namespace srf {

// True when none of the `numel` contiguous elements at `data` is NaN or +-inf.
bool all_finite_cpu(const void* data, int64_t numel, DType dtype);

}  // namespace srf
