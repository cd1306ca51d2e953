// CPU kernels of the fused multi-positive loss: cache-blocked, vectorised, OpenMP over row
// tiles, deterministic (each output row is computed by one thread in a fixed order).
//
// Layout: a task owns TM rows and walks the columns in panels of TN. Similarities of a
// TM x TN block come from an outer-product micro-kernel (MR rows x NR columns held in
// registers) over packed slivers of b; the lse pass folds them into an online
// log-sum-exp, the weighted-sum pass turns them into weights P and accumulates P @ b with a
// second micro-kernel (MR rows x DC features). Inputs are copied once into zero-padded
// buffers (O(N * D)), so the micro-kernels never see ragged edges. The register tiles follow
// the vector width: MR x (NR / lanes) accumulators must leave registers for the operands
// (AVX2 has 16: 6 x 2 accumulators; AVX-512 has 32: 8 x 2).
//
// Compiled once per CPU variant (instruction set), into namespace srf::SRF_CPU_NS; see
// cpu_kernels.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "multipos/multipos.h"

SRF_CPU_TARGET_BEGIN
namespace srf {
namespace SRF_CPU_NS {
namespace {

#if defined(SRF_CPU_VECTOR_BYTES)
constexpr int64_t kVectorBytes = SRF_CPU_VECTOR_BYTES;
#elif defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr int64_t kVectorBytes = 32;
#else
constexpr int64_t kVectorBytes = 16;
#endif
// Rows per micro-tile: 8 x 2 AVX-512 accumulators (4 rows: 1.8x slower, 2-core Zen 4); with
// 16 registers, 6 x 2 (AVX2 on the AVX-512 tile, 8 rows x 4 vectors, spilled accumulators to
// the stack in every step).
constexpr int64_t MR = kVectorBytes >= 64 ? 8 : 6;
constexpr int64_t TM = 8 * MR;  // rows per task
constexpr int64_t TN = 256;     // columns per panel: a TM x TN fp32 block is 48-64 KiB

// Columns per similarity micro-tile and features per P @ b micro-tile: two vectors of T.
template <typename T>
constexpr int64_t NR = 2 * kVectorBytes / static_cast<int64_t>(sizeof(T));
template <typename T>
constexpr int64_t DC = NR<T>;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One vector register of T (GCC and Clang vector extensions), for the element-wise passes:
// exp, the mask and the softmax weights run on whole vectors. (GCC 12 left the scalar loops
// around a scalar exp unvectorised: its bit cast to float lowers to a memset.)
template <typename T>
struct Simd {
  static constexpr int64_t lanes = kVectorBytes / static_cast<int64_t>(sizeof(T));
  typedef T vec __attribute__((vector_size(kVectorBytes)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> lane_int;
  typedef lane_int ivec __attribute__((vector_size(kVectorBytes)));

  static vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, vec v) { std::memcpy(p, &v, sizeof v); }
  static vec splat(T x) { return vec{} + x; }
  // Lane i holds c + i: the column index of each lane, for the mask.
  static ivec columns(int64_t c) {
    ivec v;
    for (int64_t i = 0; i < lanes; ++i) v[i] = static_cast<lane_int>(c + i);
    return v;
  }
  static T sum(vec v) {
    T total = 0;
    for (int64_t i = 0; i < lanes; ++i) total += v[i];
    return total;
  }
  static T max(vec v) {
    T m = v[0];
    for (int64_t i = 1; i < lanes; ++i) m = std::max(m, v[i]);
    return m;
  }
};

// exp(x) for x <= ~0 (every argument here is s - max or s - lse), a vector at a time:
// Cody-Waite reduction and the Cephes polynomial, ~1 ulp; exp(-inf) and exp(x < -87) give 0.
// Rounding to an integer by the 1.5 * 2^23 trick, 2^n by building its exponent bits.
inline Simd<float>::vec exp_nonpositive(Simd<float>::vec x) {
  using V = Simd<float>::vec;
  const V xc = x < -87.0f ? V{} - 87.0f : x;
  const V n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const V r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const V two_n = reinterpret_cast<V>((__builtin_convertvector(n, Simd<float>::ivec) + 127) << 23);
  return x < -87.0f ? V{} : p * two_n;
}

inline Simd<double>::vec exp_nonpositive(Simd<double>::vec x) {
  for (int64_t i = 0; i < Simd<double>::lanes; ++i) x[i] = std::exp(x[i]);
  return x;
}

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
  q.nb_pad = round_up(p.nb, NR<T>);
  q.dp = round_up(p.d, DC<T>);
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
    T* sliver = q.bt.data() + (j / NR<T>) * q.dp * NR<T> + j % NR<T>;
    for (int64_t k = 0; k < p.d; ++k) sliver[k * NR<T>] = b[j * p.d + k];
    if (need_b_slivers)
      for (int64_t k = 0; k < p.d; ++k) q.b[((k / DC<T>) * q.nb_pad + j) * DC<T> + k % DC<T>] = b[j * p.d + k];
  }
  return q;
}

// s[MR][NR] (row stride lds) = a[MR rows of length dp] . sliver[dp][NR].
template <typename T>
inline void similarity_micro(const T* a, int64_t dp, const T* sliver, T* s, int64_t lds) {
  T acc[MR][NR<T>] = {};
  for (int64_t k = 0; k < dp; ++k) {
    const T* bk = sliver + k * NR<T>;
    for (int64_t r = 0; r < MR; ++r) {
      const T ar = a[r * dp + k];
#pragma omp simd
      for (int64_t c = 0; c < NR<T>; ++c) acc[r][c] += ar * bk[c];
    }
  }
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t c = 0; c < NR<T>; ++c) s[r * lds + c] = acc[r][c];
}

// o[MR][DC] (row stride ldo) += w[MR][nj] (row stride ldw) @ sliver[nj][DC].
template <typename T>
inline void weighted_rows_micro(const T* w, int64_t ldw, const T* sliver, int64_t nj, T* o, int64_t ldo) {
  T acc[MR][DC<T>];
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t c = 0; c < DC<T>; ++c) acc[r][c] = o[r * ldo + c];
  for (int64_t j = 0; j < nj; ++j) {
    const T* bj = sliver + j * DC<T>;
    for (int64_t r = 0; r < MR; ++r) {
      const T wr = w[r * ldw + j];
#pragma omp simd
      for (int64_t c = 0; c < DC<T>; ++c) acc[r][c] += wr * bj[c];
    }
  }
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t c = 0; c < DC<T>; ++c) o[r * ldo + c] = acc[r][c];
}

// Raw similarities of rows [i0, i0 + rows) against panel columns [j0, j0 + jw) into s[TM][TN].
template <typename T>
void similarity_block(const Packed<T>& q, int64_t i0, int64_t rows, int64_t j0, int64_t jw, T* s) {
  for (int64_t r0 = 0; r0 < rows; r0 += MR)
    for (int64_t c0 = 0; c0 < jw; c0 += NR<T>)
      similarity_micro(q.a + (i0 + r0) * q.dp, q.dp, q.bt.data() + (j0 + c0) * q.dp, s + r0 * TN + c0, TN);
}

// The panel-relative index of row i's excluded column in the panel [j0, j0 + jw), or -1 when
// the panel does not hold it (as a vector lane's integer type).
template <typename Lane>
Lane skipped_lane(const MultiposProblem& p, int64_t i, int64_t j0, int64_t jw) {
  const int64_t c = p.has_diag ? i + p.diag - j0 : -1;
  return static_cast<Lane>(c >= 0 && c < jw ? c : -1);
}

template <typename T>
void lse_impl(const MultiposProblem& p, T* lse_out) {
  using S = Simd<T>;
  using Vec = typename S::vec;
  using IVec = typename S::ivec;
  using Lane = typename S::lane_int;
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
          const Lane skip = skipped_lane<Lane>(p, i0 + r, j0, jw);
          const Lane valid = static_cast<Lane>(std::min(jw, p.nb - j0));
          Vec mx = S::splat(neg_inf);
          for (int64_t c = 0; c < jw; c += S::lanes) {  // jw is a multiple of NR: whole vectors
            const IVec col = S::columns(c);
            const Vec x = (col < valid) & (col != skip) ? scale * S::load(sr + c) : S::splat(neg_inf);
            S::store(sr + c, x);
            mx = mx > x ? mx : x;
          }
          const T panel_max = S::max(mx);
          if (panel_max == neg_inf) continue;  // nothing in this panel
          const T m_new = std::max(m[r], panel_max);
          Vec sum{};
          for (int64_t c = 0; c < jw; c += S::lanes) sum += exp_nonpositive(S::load(sr + c) - m_new);
          l[r] = (m[r] == neg_inf ? T(0) : l[r] * std::exp(m[r] - m_new)) + S::sum(sum);
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
  using S = Simd<T>;
  using Vec = typename S::vec;
  using IVec = typename S::ivec;
  using Lane = typename S::lane_int;
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
          const Lane skip = skipped_lane<Lane>(p, i, j0, jw);
          const Lane valid = static_cast<Lane>(std::min(jw, p.nb - j0));
          const T ui = HAS_U ? u[i] : T(0), la = HAS_U ? lse_a[i] : T(0);
          const T* vj = HAS_V ? v_pad.data() + j0 : nullptr;
          const T* lb = HAS_V ? lse_b_pad.data() + j0 : nullptr;
          for (int64_t c = 0; c < jw; c += S::lanes) {  // jw is a multiple of NR: whole vectors
            const Vec x = scale * S::load(sr + c);
            Vec w{};
            if constexpr (HAS_U) w += ui * exp_nonpositive(x - la);
            if constexpr (HAS_V) w += S::load(vj + c) * exp_nonpositive(x - S::load(lb + c));
            const IVec col = S::columns(c);
            S::store(sr + c, (col < valid) & (col != skip) ? w : Vec{});
          }
        }
        for (int64_t r0 = 0; r0 < rows; r0 += MR)
          for (int64_t d0 = 0; d0 < q.dp; d0 += DC<T>)
            weighted_rows_micro(s.data() + r0 * TN, TN, q.b.data() + (d0 * q.nb_pad + j0 * DC<T>), jw,
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
