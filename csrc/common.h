// Shared conventions of the extension: tensors arrive as (pointer, sizes, dtype) from Python.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace srf {

// Element types the kernels understand; Python maps torch dtypes onto these.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

inline const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

// Cheap argument checks on the C++ side; Python has already validated in detail.
inline void check_arg(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace srf
