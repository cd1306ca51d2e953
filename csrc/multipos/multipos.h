// The two kernels of the fused multi-positive loss (see stablerep_fast/ops/multipos_fused.py).
//
//   lse:          lse_i = log sum_j exp(s_ij),        s_ij = scale * a_i . b_j
//   weighted_sum: out_i = sum_j (u_i exp(s_ij - lse_a_i) + v_j exp(s_ij - lse_b_j)) b_j
//
// The pair (i, i + diag) is excluded when has_diag. a is [na, d], b is [nb, d], both
// row-major and contiguous; u/lse_a/v/lse_b may be null (that term is absent); lse entries
// are finite or +inf (+inf makes the term vanish). The CPU versions take float or double and
// write results in that precision. Nothing [na, nb] is ever allocated.
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

void multipos_lse_cpu(const MultiposProblem& p, DType dtype, void* lse_out);

void multipos_weighted_sum_cpu(const MultiposProblem& p, DType dtype, const void* u, const void* lse_a,
                               const void* v, const void* lse_b, void* out);

#if defined(SRF_WITH_CUDA)
// CUDA versions: a, b, the scale (one float32, read on the device instead of p.scale) and
// the optional vectors are device pointers on `device`; inputs are float32 (TF32 tensor
// cores, or exact FMAs when `exact`), float16 or bfloat16; u, lse_a, v, lse_b and the
// outputs are float32. Launched on `stream` (a cudaStream_t); D <= 256.
void multipos_lse_cuda(const MultiposProblem& p, const float* scale, DType dtype, bool exact, void* lse_out,
                       int device, void* stream);

void multipos_weighted_sum_cuda(const MultiposProblem& p, const float* scale, DType dtype, bool exact,
                                const void* u, const void* lse_a, const void* v, const void* lse_b, void* out,
                                int device, void* stream);
#endif

}  // namespace srf
