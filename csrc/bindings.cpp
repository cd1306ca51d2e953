// The only file that includes pybind11: thin wrappers that take pointers, sizes and dtypes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "common.h"
#include "finite/finite.h"
#if defined(SRF_WITH_CUDA)
#include "cuda_info.h"
#endif
#if defined(SRF_WITH_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
#if defined(SRF_WITH_OPENMP)
  info["openmp"] = true;
  info["omp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["omp_max_threads"] = 1;
#endif
#if defined(SRF_WITH_CUDA)
  info["cuda"] = true;
  info["cuda_archs"] = std::string(SRF_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "stablerep_fast compiled kernels (no libtorch dependency)";

  py::enum_<srf::DType>(m, "DType")
      .value("float32", srf::DType::Float32)
      .value("float64", srf::DType::Float64)
      .value("float16", srf::DType::Float16)
      .value("bfloat16", srf::DType::BFloat16);

  m.def("build_info", &build_info, "How this extension was compiled (OpenMP, CUDA, architectures).");

  m.def(
      "all_finite",
      [](std::uintptr_t data, std::int64_t numel, srf::DType dtype) {
        const void* ptr = reinterpret_cast<const void*>(data);
        py::gil_scoped_release release;
        return srf::all_finite_cpu(ptr, numel, dtype);
      },
      py::arg("data_ptr"), py::arg("numel"), py::arg("dtype"),
      "True when no element of a contiguous host buffer is NaN or inf.");

#if defined(SRF_WITH_CUDA)
  m.def("cuda_runtime_info", &srf::cuda_runtime_info,
        "CUDA runtime/driver versions and device count as seen by the extension.");
#endif
}
