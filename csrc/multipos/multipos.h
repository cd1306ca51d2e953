// The two kernels of the fused multi-positive loss (see stablerep_fast/ops/multipos_fused.py).
//
//   lse:          lse_i = log sum_j exp(s_ij),        s_ij = scale * a_i . b_j
//   weighted_sum: out_i = sum_j (u_i exp(s_ij - lse_a_i) + v_j exp(s_ij - lse_b_j)) b_j
//
// The pair (i, i + diag) is excluded when has_diag. a is [na, d], b is [nb, d], both
// row-major and contiguous; u/lse_a/v/lse_b may be null (that term is absent); lse entries
// are finite or +inf (+inf makes the term vanish). Nothing [na, nb] is ever allocated.
// The CPU kernels (float or double, results in that precision) are declared per instruction
// set in cpu_kernels.h and reached through cpu_variants.h; the CUDA kernels below.
#pragma once

#include <cstdint>

#include "common.h"

namespace srf {

struct MultiposProblem {
  const void* a;
  const void* b;
  int64_t na, nb, d;
  double scale;
  bool has_diag;
  int64_t diag;
};

#if defined(SRF_WITH_CUDA)
enum class MultiposKernel { Lse, WeightedSum };

// Weighted sum terms on the device (float32); all null for lse.
struct MultiposTerms {
  const void* u = nullptr;
  const void* lse_a = nullptr;
  const void* v = nullptr;
  const void* lse_b = nullptr;
};

// Launches kernel `which` on the GPU: a, b, the scale (one float32, read on the device instead
// of p.scale), the terms and `out` are device pointers on `device`; inputs are float32 (TF32
// tensor cores, or exact FMAs when `exact`) or bfloat16; outputs are float32 (lse [na],
// weighted_sum [na, d]). Launched on `stream` (a cudaStream_t); D <= 256. Checks its arguments
// and turns CUDA errors into std::runtime_error naming the failing call.
void multipos_cuda(MultiposKernel which, const MultiposProblem& p, const float* scale, DType dtype, bool exact,
                   const MultiposTerms& terms, void* out, int device, void* stream);
#endif

}  // namespace srf
