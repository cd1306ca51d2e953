// CPU kernels of the fused multi-positive loss: cache-blocked, vectorised, OpenMP over row
// tiles, deterministic (each output row is computed by one thread in a fixed order).
//
// Layout: a task owns TM rows and walks the columns in panels of TN. Similarities of a
// TM x TN block come from an outer-product micro-kernel (MR rows x NR columns held in
// registers) over packed slivers of b; the lse pass folds them into an online
// log-sum-exp, the weighted-sum pass turns them into weights P and accumulates P @ b with a
// second micro-kernel (MR rows x DC features). Inputs are copied once into zero-padded
// buffers (O(N * D)), so the micro-kernels never see ragged edges.
//
// Compiled once per CPU variant (instruction set), into namespace srf::SRF_CPU_NS; see
// cpu_kernels.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_kernels.h"
#include "multipos/multipos.h"

SRF_CPU_TARGET_BEGIN
namespace srf {
namespace SRF_CPU_NS {
namespace {

constexpr int64_t MR = 8;    // rows per micro-tile: 8 x 2 AVX-512 accumulators (4 rows: 1.8x slower, 2-core Zen 4)
constexpr int64_t NR = 32;   // columns per similarity micro-tile (2 AVX-512 fp32 vectors)
constexpr int64_t DC = 32;   // features per P @ b micro-tile
constexpr int64_t TM = 64;   // rows per task
constexpr int64_t TN = 256;  // columns per panel: a TM x TN fp32 block is 64 KiB

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// exp(x) for x <= ~0 (every argument here is s - max or s - lse): Cody-Waite reduction and
// the Cephes polynomial, ~1 ulp; exp(-inf) and exp(x < -87) give 0. Written so GCC
// vectorises the loops that call it: rounding by the 1.5 * 2^23 trick (std::floor blocks
// vectorisation with GCC 12) and 2^n by a bit cast.
inline float exp_nonpositive(float x) {
  const float xc = std::max(x, -87.0f);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float two_n = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * two_n;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// Zero-padded copies laid out for the micro-kernels: every micro-kernel operand is one
// contiguous stream (strided panels thrash L1 sets when nb or D is a power of two).
template <typename T>
struct Packed {
  int64_t na_pad, nb_pad, dp;
  const T* a;         // [na_pad, dp]: the input itself when no padding is needed, else a_copy
  std::vector<T> a_copy;
  std::vector<T> bt;  // b transposed in NR-column slivers: [nb_pad / NR][dp][NR]
  std::vector<T> b;   // b in DC-feature slivers: [dp / DC][nb_pad][DC] (weighted_sum only)
};

template <typename T>
Packed<T> pack_inputs(const MultiposProblem& p, bool need_b_slivers) {
  Packed<T> q;
  q.na_pad = round_up(p.na, MR);
  q.nb_pad = round_up(p.nb, NR);
  q.dp = round_up(p.d, DC);
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  q.bt.assign(q.dp * q.nb_pad, T(0));
  if (need_b_slivers) q.b.assign(q.nb_pad * q.dp, T(0));
  q.a = a;
  if (q.na_pad != p.na || q.dp != p.d) {
    q.a_copy.assign(q.na_pad * q.dp, T(0));
#if defined(SRF_WITH_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (int64_t i = 0; i < p.na; ++i) std::copy(a + i * p.d, a + (i + 1) * p.d, q.a_copy.data() + i * q.dp);
    q.a = q.a_copy.data();
  }
#if defined(SRF_WITH_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (int64_t j = 0; j < p.nb; ++j) {
    T* sliver = q.bt.data() + (j / NR) * q.dp * NR + j % NR;
    for (int64_t k = 0; k < p.d; ++k) sliver[k * NR] = b[j * p.d + k];
    if (need_b_slivers)
      for (int64_t k = 0; k < p.d; ++k) q.b[((k / DC) * q.nb_pad + j) * DC + k % DC] = b[j * p.d + k];
  }
  return q;
}

// s[MR][NR] (row stride lds) = a[MR rows of length dp] . sliver[dp][NR].
template <typename T>
inline void similarity_micro(const T* a, int64_t dp, const T* sliver, T* s, int64_t lds) {
  T acc[MR][NR] = {};
  for (int64_t k = 0; k < dp; ++k) {
    const T* bk = sliver + k * NR;
    for (int64_t r = 0; r < MR; ++r) {
      const T ar = a[r * dp + k];
#pragma omp simd
      for (int64_t c = 0; c < NR; ++c) acc[r][c] += ar * bk[c];
    }
  }
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t c = 0; c < NR; ++c) s[r * lds + c] = acc[r][c];
}

// o[MR][DC] (row stride ldo) += w[MR][nj] (row stride ldw) @ sliver[nj][DC].
template <typename T>
inline void weighted_rows_micro(const T* w, int64_t ldw, const T* sliver, int64_t nj, T* o, int64_t ldo) {
  T acc[MR][DC];
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t c = 0; c < DC; ++c) acc[r][c] = o[r * ldo + c];
  for (int64_t j = 0; j < nj; ++j) {
    const T* bj = sliver + j * DC;
    for (int64_t r = 0; r < MR; ++r) {
      const T wr = w[r * ldw + j];
#pragma omp simd
      for (int64_t c = 0; c < DC; ++c) acc[r][c] += wr * bj[c];
    }
  }
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t c = 0; c < DC; ++c) o[r * ldo + c] = acc[r][c];
}

// Raw similarities of rows [i0, i0 + rows) against panel columns [j0, j0 + jw) into s[TM][TN].
template <typename T>
void similarity_block(const Packed<T>& q, int64_t i0, int64_t rows, int64_t j0, int64_t jw, T* s) {
  for (int64_t r0 = 0; r0 < rows; r0 += MR)
    for (int64_t c0 = 0; c0 < jw; c0 += NR)
      similarity_micro(q.a + (i0 + r0) * q.dp, q.dp, q.bt.data() + (j0 + c0) * q.dp, s + r0 * TN + c0, TN);
}

// Index of the excluded column of row i, or -1.
inline int64_t excluded_col(const MultiposProblem& p, int64_t i) { return p.has_diag ? i + p.diag : -1; }

template <typename T>
void lse_impl(const MultiposProblem& p, T* lse_out) {
  const Packed<T> q = pack_inputs<T>(p, false);
  const T scale = static_cast<T>(p.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
#if defined(SRF_WITH_OPENMP)
#pragma omp parallel
#endif
  {
    std::vector<T> s(TM * TN), m(TM), l(TM);
#if defined(SRF_WITH_OPENMP)
#pragma omp for schedule(dynamic)
#endif
    for (int64_t i0 = 0; i0 < q.na_pad; i0 += TM) {
      const int64_t rows = std::min(TM, q.na_pad - i0);
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t j0 = 0; j0 < q.nb_pad; j0 += TN) {
        const int64_t jw = std::min(TN, q.nb_pad - j0);
        similarity_block(q, i0, rows, j0, jw, s.data());
        for (int64_t r = 0; r < rows && i0 + r < p.na; ++r) {
          T* sr = s.data() + r * TN;
          const int64_t skip = excluded_col(p, i0 + r) - j0;
          const int64_t valid = std::min(jw, p.nb - j0);
          T mx = neg_inf;
#pragma omp simd reduction(max : mx)
          for (int64_t c = 0; c < jw; ++c) {
            sr[c] = ((c < valid) & (c != skip)) ? scale * sr[c] : neg_inf;
            mx = std::max(mx, sr[c]);
          }
          if (mx == neg_inf) continue;  // nothing in this panel
          const T m_new = std::max(m[r], mx);
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t c = 0; c < jw; ++c) sum += exp_nonpositive(sr[c] - m_new);
          l[r] = (m[r] == neg_inf ? T(0) : l[r] * exp_nonpositive(m[r] - m_new)) + sum;
          m[r] = m_new;
        }
      }
      for (int64_t r = 0; r < rows && i0 + r < p.na; ++r)
        lse_out[i0 + r] = m[r] == neg_inf ? neg_inf : m[r] + std::log(l[r]);
    }
  }
}

// One signature for every instantiation, so the entry point picks one by pointer and calls it.
template <typename T, bool HAS_U, bool HAS_V>
void weighted_sum_impl(const MultiposProblem& p, const void* u_in, const void* lse_a_in, const void* v_in,
                       const void* lse_b_in, void* out_in) {
  T* out = static_cast<T*>(out_in);
  if constexpr (!HAS_U && !HAS_V) {
    std::fill(out, out + p.na * p.d, T(0));
    return;
  }
  const T* u = static_cast<const T*>(u_in);
  const T* lse_a = static_cast<const T*>(lse_a_in);
  const T* v = static_cast<const T*>(v_in);
  const T* lse_b = static_cast<const T*>(lse_b_in);
  const Packed<T> q = pack_inputs<T>(p, true);
  const T scale = static_cast<T>(p.scale);
  // Column terms padded so the inner loops never read past nb (padding weight 0).
  std::vector<T> v_pad(HAS_V ? q.nb_pad : 0, T(0)), lse_b_pad(HAS_V ? q.nb_pad : 0, T(0));
  if (HAS_V) {
    std::copy(v, v + p.nb, v_pad.begin());
    std::copy(lse_b, lse_b + p.nb, lse_b_pad.begin());
  }
#if defined(SRF_WITH_OPENMP)
#pragma omp parallel
#endif
  {
    std::vector<T> s(TM * TN), o(TM * q.dp);
#if defined(SRF_WITH_OPENMP)
#pragma omp for schedule(dynamic)
#endif
    for (int64_t i0 = 0; i0 < q.na_pad; i0 += TM) {
      const int64_t rows = std::min(TM, q.na_pad - i0);
      std::fill(o.begin(), o.end(), T(0));
      for (int64_t j0 = 0; j0 < q.nb_pad; j0 += TN) {
        const int64_t jw = std::min(TN, q.nb_pad - j0);
        similarity_block(q, i0, rows, j0, jw, s.data());
        for (int64_t r = 0; r < rows; ++r) {
          T* sr = s.data() + r * TN;
          const int64_t i = i0 + r;
          if (i >= p.na) {
            std::fill(sr, sr + jw, T(0));
            continue;
          }
          const int64_t skip = excluded_col(p, i) - j0;
          const int64_t valid = std::min(jw, p.nb - j0);
          const T ui = HAS_U ? u[i] : T(0), la = HAS_U ? lse_a[i] : T(0);
          const T* vj = HAS_V ? v_pad.data() + j0 : nullptr;
          const T* lb = HAS_V ? lse_b_pad.data() + j0 : nullptr;
#pragma omp simd
          for (int64_t c = 0; c < jw; ++c) {
            const T x = scale * sr[c];
            T w = 0;
            if (HAS_U) w += ui * exp_nonpositive(x - la);
            if (HAS_V) w += vj[c] * exp_nonpositive(x - lb[c]);
            sr[c] = ((c < valid) & (c != skip)) ? w : T(0);
          }
        }
        for (int64_t r0 = 0; r0 < rows; r0 += MR)
          for (int64_t d0 = 0; d0 < q.dp; d0 += DC)
            weighted_rows_micro(s.data() + r0 * TN, TN, q.b.data() + (d0 * q.nb_pad + j0 * DC), jw,
                                o.data() + r0 * q.dp + d0, q.dp);
      }
      for (int64_t r = 0; r < rows && i0 + r < p.na; ++r)
        std::copy(o.data() + r * q.dp, o.data() + r * q.dp + p.d, out + (i0 + r) * p.d);
    }
  }
}

using WeightedSumKernel = void (*)(const MultiposProblem&, const void*, const void*, const void*, const void*, void*);

template <typename T>
WeightedSumKernel weighted_sum_kernel(bool has_u, bool has_v) {
  if (has_u) return has_v ? weighted_sum_impl<T, true, true> : weighted_sum_impl<T, true, false>;
  return has_v ? weighted_sum_impl<T, false, true> : weighted_sum_impl<T, false, false>;
}

void check_problem(const MultiposProblem& p) {
  check_arg(p.na >= 0 && p.nb >= 0 && p.d >= 1, "multipos: sizes must satisfy na, nb >= 0 and d >= 1");
  check_arg((p.a != nullptr || p.na == 0) && (p.b != nullptr || p.nb == 0), "multipos: null input pointer");
  check_arg(std::isfinite(p.scale), "multipos: scale must be finite");
}

}  // namespace

void multipos_lse_cpu(const MultiposProblem& p, DType dtype, void* lse_out) {
  check_problem(p);
  check_arg(lse_out != nullptr || p.na == 0, "multipos_lse: null output pointer");
  switch (dtype) {
    case DType::Float32: return lse_impl<float>(p, static_cast<float*>(lse_out));
    case DType::Float64: return lse_impl<double>(p, static_cast<double*>(lse_out));
    default: throw std::invalid_argument(std::string("multipos_lse (cpu): unsupported dtype ") + dtype_name(dtype));
  }
}

void multipos_weighted_sum_cpu(const MultiposProblem& p, DType dtype, const void* u, const void* lse_a,
                               const void* v, const void* lse_b, void* out) {
  check_problem(p);
  check_arg(out != nullptr || p.na == 0, "multipos_weighted_sum: null output pointer");
  check_arg((u == nullptr) == (lse_a == nullptr), "multipos_weighted_sum: u and lse_a go together");
  check_arg((v == nullptr) == (lse_b == nullptr), "multipos_weighted_sum: v and lse_b go together");
  WeightedSumKernel kernel = nullptr;
  switch (dtype) {
    case DType::Float32: kernel = weighted_sum_kernel<float>(u != nullptr, v != nullptr); break;
    case DType::Float64: kernel = weighted_sum_kernel<double>(u != nullptr, v != nullptr); break;
    default:
      throw std::invalid_argument(std::string("multipos_weighted_sum (cpu): unsupported dtype ") + dtype_name(dtype));
  }
  kernel(p, u, lse_a, v, lse_b, out);
}

}  // namespace SRF_CPU_NS
}  // namespace srf
SRF_CPU_TARGET_END
