// The only file that includes pybind11: thin wrappers that take pointers, sizes and dtypes.
//
// Each kernel entry is two C++ calls from its kernel: the entry calls the kernel's host
// function, which checks its arguments and then launches (CUDA) or calls (CPU) the kernel.
//   CPU:  entry -> cpu_kernels().multipos_lse / .multipos_weighted_sum / .all_finite (the
//         copy for this CPU's instruction set, multipos_cpu.cpp / finite.cpp) -> kernel template
//   CUDA: entry -> multipos_cuda (multipos_cuda.cu) -> kernel<<<...>>>
// tests/ops/test_call_depth.py reads these sources and checks that the chains stay this short.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>

#include "common.h"
#include "cpu_variants.h"
#include "multipos/multipos.h"
#if defined(SRF_WITH_CUDA)
#include "cuda_info.h"
#endif
#if defined(SRF_WITH_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename T>
const T* ptr(std::uintptr_t address) {
  return reinterpret_cast<const T*>(address);
}

srf::MultiposProblem problem(std::uintptr_t a, std::uintptr_t b, std::int64_t na, std::int64_t nb, std::int64_t d,
                             double scale, std::optional<std::int64_t> diag) {
  return srf::MultiposProblem{ptr<void>(a), ptr<void>(b), na, nb, d, scale, diag.has_value(), diag.value_or(0)};
}

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
  py::list variants;
  for (const auto& variant : srf::cpu_variants()) variants.append(variant.first);
  info["cpu_variants"] = variants;
  info["cpu_variant"] = srf::cpu_variant();
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

  m.def("build_info", &build_info,
        "How this extension was compiled (OpenMP, CUDA architectures, CPU kernel variants and the one in use).");
  m.def("cpu_variants", &srf::cpu_variants,
        "Every CPU kernel variant in this build, best first, with whether this CPU runs it.");
  m.def("set_cpu_variant", &srf::set_cpu_variant, py::arg("name"),
        "Run the CPU kernels on this variant from now on (by default the best this CPU runs).");

  m.def(
      "all_finite",
      [](std::uintptr_t data, std::int64_t numel, srf::DType dtype) {
        const void* ptr = reinterpret_cast<const void*>(data);
        py::gil_scoped_release release;
        return srf::cpu_kernels().all_finite(ptr, numel, dtype);
      },
      py::arg("data_ptr"), py::arg("numel"), py::arg("dtype"),
      "True when no element of a contiguous host buffer is NaN or inf.");

  // Multi-positive loss kernels. Pointers are addresses of contiguous buffers (0 = absent);
  // a is [na, d], b is [nb, d]; diag: the pair (i, i + diag) is left out, None leaves none out.
  // The CPU kernels write their outputs in the input dtype (float32 or float64).
  m.def(
      "multipos_lse",
      [](std::uintptr_t a, std::uintptr_t b, std::int64_t na, std::int64_t nb, std::int64_t d, srf::DType dtype,
         double scale, std::optional<std::int64_t> diag, std::uintptr_t lse_out) {
        srf::MultiposProblem p = problem(a, b, na, nb, d, scale, diag);
        py::gil_scoped_release release;
        srf::cpu_kernels().multipos_lse(p, dtype, reinterpret_cast<void*>(lse_out));
      },
      py::kw_only(), py::arg("a"), py::arg("b"), py::arg("na"), py::arg("nb"), py::arg("d"), py::arg("dtype"),
      py::arg("scale"), py::arg("diag").none(true), py::arg("lse_out"),
      "lse_i = log sum_j exp(scale a_i . b_j) over the kept pairs.");
  m.def(
      "multipos_weighted_sum",
      [](std::uintptr_t a, std::uintptr_t b, std::int64_t na, std::int64_t nb, std::int64_t d, srf::DType dtype,
         double scale, std::optional<std::int64_t> diag, std::uintptr_t u, std::uintptr_t lse_a, std::uintptr_t v,
         std::uintptr_t lse_b, std::uintptr_t out) {
        srf::MultiposProblem p = problem(a, b, na, nb, d, scale, diag);
        py::gil_scoped_release release;
        srf::cpu_kernels().multipos_weighted_sum(p, dtype, ptr<void>(u), ptr<void>(lse_a), ptr<void>(v),
                                                 ptr<void>(lse_b), reinterpret_cast<void*>(out));
      },
      py::kw_only(), py::arg("a"), py::arg("b"), py::arg("na"), py::arg("nb"), py::arg("d"), py::arg("dtype"),
      py::arg("scale"), py::arg("diag").none(true), py::arg("u"), py::arg("lse_a"), py::arg("v"), py::arg("lse_b"),
      py::arg("out"),
      "out_i = sum_j (u_i exp(s_ij - lse_a_i) + v_j exp(s_ij - lse_b_j)) b_j with s_ij = scale a_i . b_j.");

#if defined(SRF_WITH_CUDA)
  // The same kernels on the GPU: device pointers (the scale too), the device index and the
  // caller's stream; exact: float32 products as FMAs instead of TF32.
  m.def(
      "multipos_lse_cuda",
      [](std::uintptr_t a, std::uintptr_t b, std::int64_t na, std::int64_t nb, std::int64_t d, srf::DType dtype,
         std::uintptr_t scale, std::optional<std::int64_t> diag, bool exact, std::uintptr_t lse_out, int device,
         std::uintptr_t stream) {
        srf::MultiposProblem p = problem(a, b, na, nb, d, 0.0, diag);
        py::gil_scoped_release release;
        srf::multipos_cuda(srf::MultiposKernel::Lse, p, ptr<float>(scale), dtype, exact, srf::MultiposTerms{},
                           reinterpret_cast<void*>(lse_out), device, reinterpret_cast<void*>(stream));
      },
      py::kw_only(), py::arg("a"), py::arg("b"), py::arg("na"), py::arg("nb"), py::arg("d"), py::arg("dtype"),
      py::arg("scale"), py::arg("diag").none(true), py::arg("exact"), py::arg("lse_out"), py::arg("device"),
      py::arg("stream"));
  m.def(
      "multipos_weighted_sum_cuda",
      [](std::uintptr_t a, std::uintptr_t b, std::int64_t na, std::int64_t nb, std::int64_t d, srf::DType dtype,
         std::uintptr_t scale, std::optional<std::int64_t> diag, bool exact, std::uintptr_t u, std::uintptr_t lse_a,
         std::uintptr_t v, std::uintptr_t lse_b, std::uintptr_t out, int device, std::uintptr_t stream) {
        srf::MultiposProblem p = problem(a, b, na, nb, d, 0.0, diag);
        const srf::MultiposTerms terms{ptr<void>(u), ptr<void>(lse_a), ptr<void>(v), ptr<void>(lse_b)};
        py::gil_scoped_release release;
        srf::multipos_cuda(srf::MultiposKernel::WeightedSum, p, ptr<float>(scale), dtype, exact, terms,
                           reinterpret_cast<void*>(out), device, reinterpret_cast<void*>(stream));
      },
      py::kw_only(), py::arg("a"), py::arg("b"), py::arg("na"), py::arg("nb"), py::arg("d"), py::arg("dtype"),
      py::arg("scale"), py::arg("diag").none(true), py::arg("exact"), py::arg("u"), py::arg("lse_a"), py::arg("v"),
      py::arg("lse_b"), py::arg("out"), py::arg("device"), py::arg("stream"));
  m.def("cuda_runtime_info", &srf::cuda_runtime_info,
        "CUDA runtime/driver versions and device count as seen by the extension.");
#endif
}
