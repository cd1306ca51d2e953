// CUDA kernels of the fused multi-positive loss (same contract as multipos.h).
//
// One block owns BM = 64 rows of a and walks b in tiles of BN = 64 columns; the whole
// [64, D] row tile and the current [64, D] column tile sit in shared memory (D <= 256).
// Similarities come from tensor cores (WMMA: bf16/fp16 m16n16k16, fp32 as TF32 m16n16k8)
// or, for exact fp32, from plain FMAs. The lse kernel folds each 64 x 64 block into an
// online log-sum-exp; the weighted-sum kernel turns it into weights P and accumulates
// P @ b_tile in registers (tensor cores) or per D-chunk (exact). On tensor cores P is split
// into two parts (hi + lo, each in the operand precision) so the gradient keeps about
// 16 bits of P: a single rounding loses the small differences a trained encoder's tight
// clusters leave. Every output row belongs to one block and is reduced in a fixed order:
// deterministic, no atomics. (float16 inputs are run as float32 by the Python side: its
// range would flush the ~1/N weights.)
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "multipos/multipos.h"

namespace srf {
namespace {

using namespace nvcuda;

constexpr int BM = 64;        // rows per block
constexpr int BN = 64;        // columns per tile
constexpr int THREADS = 128;  // 4 warps; warp w owns rows [16 w, 16 w + 16)
constexpr int MAX_D = 256;
constexpr int S_LD = BN + 4;  // fp32 similarity tile stride (multiple of 4 for WMMA)

__host__ __device__ inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

template <typename T>
__device__ inline float to_float(T x);
template <>
__device__ inline float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) { return x; }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// Shared-memory row stride of a [rows, dp] operand tile (16-bit types: multiple of 8 elements).
template <typename T>
__host__ __device__ inline int tile_ld(int dp) { return dp + (sizeof(T) == 2 ? 8 : 4); }

// rows [row0, row0 + 64) of x ([n, d] row-major) into tile[64][ld], zero beyond n and d.
template <typename T>
__device__ void load_tile(const T* __restrict__ x, int64_t n, int d, int dp, int64_t row0, T* tile) {
  const int ld = tile_ld<T>(dp);
  for (int idx = threadIdx.x; idx < BM * dp; idx += THREADS) {
    const int r = idx / dp, k = idx % dp;
    const int64_t row = row0 + r;
    tile[r * ld + k] = (row < n && k < d) ? x[row * d + k] : from_float<T>(0.f);
  }
}

// Tensor-core fragment shapes per input type (fp32 goes through TF32).
template <typename T>
struct Mma {
  static constexpr int K = 16;
  using Elem = T;
  template <typename Frag>
  __device__ static void round(Frag&) {}
};
template <>
struct Mma<float> {
  static constexpr int K = 8;
  using Elem = wmma::precision::tf32;
  template <typename Frag>
  __device__ static void round(Frag& f) {
    for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
  }
  // f (float values) -> f rounded to TF32 plus the rounding error rounded to TF32 in lo.
  template <typename Frag>
  __device__ static void split(Frag& f, Frag& lo) {
    for (int t = 0; t < f.num_elements; ++t) {
      const float x = f.x[t], hi = wmma::__float_to_tf32(x);
      f.x[t] = hi;
      lo.x[t] = wmma::__float_to_tf32(x - hi);
    }
  }
};

// s[64][S_LD] = a_tile @ b_tile^T (unscaled), on tensor cores.
template <typename T>
__device__ void similarity_mma(const T* a_tile, const T* b_tile, int dp, float* s) {
  constexpr int K = Mma<T>::K;
  using E = typename Mma<T>::Elem;
  const int warp = threadIdx.x / 32, ld = tile_ld<T>(dp);
  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc[BN / 16];
  for (int c = 0; c < BN / 16; ++c) wmma::fill_fragment(acc[c], 0.f);
  for (int k = 0; k < dp; k += K) {
    wmma::fragment<wmma::matrix_a, 16, 16, K, E, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a_tile + warp * 16 * ld + k, ld);
    Mma<T>::round(fa);
#pragma unroll
    for (int c = 0; c < BN / 16; ++c) {
      wmma::fragment<wmma::matrix_b, 16, 16, K, E, wmma::col_major> fb;
      wmma::load_matrix_sync(fb, b_tile + c * 16 * ld + k, ld);
      Mma<T>::round(fb);
      wmma::mma_sync(acc[c], fa, fb, acc[c]);
    }
  }
  for (int c = 0; c < BN / 16; ++c)
    wmma::store_matrix_sync(s + warp * 16 * S_LD + c * 16, acc[c], S_LD, wmma::mem_row_major);
}

// s[64][S_LD] = a_tile @ b_tile^T in exact fp32: thread t owns row t / 2, columns of half t % 2.
__device__ void similarity_exact(const float* a_tile, const float* b_tile, int dp, float* s) {
  const int r = threadIdx.x / 2, c0 = (threadIdx.x % 2) * (BN / 2), ld = tile_ld<float>(dp);
  float acc[BN / 2] = {};
  for (int k = 0; k < dp; ++k) {
    const float ar = a_tile[r * ld + k];
#pragma unroll
    for (int c = 0; c < BN / 2; ++c) acc[c] = fmaf(ar, b_tile[(c0 + c) * ld + k], acc[c]);
  }
#pragma unroll
  for (int c = 0; c < BN / 2; ++c) s[r * S_LD + c0 + c] = acc[c];
}

template <typename T, bool EXACT>
__device__ inline void similarity(const T* a_tile, const T* b_tile, int dp, float* s) {
  if constexpr (EXACT) {
    similarity_exact(a_tile, b_tile, dp, s);
  } else {
    similarity_mma<T>(a_tile, b_tile, dp, s);
  }
}

struct Args {
  const void* a;
  const void* b;
  int64_t na, nb;
  int d;
  const float* scale;  // device scalar: no host sync to read a learnable scale
  bool has_diag;
  int64_t diag;
  const float* u;
  const float* lse_a;
  const float* v;
  const float* lse_b;
  float* out;
};

template <typename T, bool EXACT>
__global__ void __launch_bounds__(THREADS) lse_kernel(Args p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int dp = round_up(p.d, 16), ld = tile_ld<T>(dp);
  T* a_tile = reinterpret_cast<T*>(smem);
  T* b_tile = a_tile + BM * ld;
  float* s = reinterpret_cast<float*>(b_tile + BN * ld);
  const int64_t row0 = int64_t(blockIdx.x) * BM;
  load_tile(static_cast<const T*>(p.a), p.na, p.d, dp, row0, a_tile);

  // Thread t keeps a running (max, sum) for row t / 2 over the columns of half t % 2.
  const int r = threadIdx.x / 2, half = threadIdx.x % 2;
  const int64_t i = row0 + r;
  const int64_t skip = p.has_diag ? i + p.diag : -1;
  const float scale = *p.scale;
  float m = -INFINITY, l = 0.f;
  for (int64_t col0 = 0; col0 < p.nb; col0 += BN) {
    __syncthreads();  // the previous tile's readers are done with b_tile and s
    load_tile(static_cast<const T*>(p.b), p.nb, p.d, dp, col0, b_tile);
    __syncthreads();
    similarity<T, EXACT>(a_tile, b_tile, dp, s);
    __syncthreads();
    float x[BN / 2];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < BN / 2; ++c) {
      const int64_t j = col0 + half * (BN / 2) + c;
      x[c] = (j < p.nb && j != skip) ? scale * s[r * S_LD + half * (BN / 2) + c] : -INFINITY;
      tile_max = fmaxf(tile_max, x[c]);
    }
    if (tile_max == -INFINITY) continue;
    const float m_new = fmaxf(m, tile_max);
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < BN / 2; ++c) sum += __expf(x[c] - m_new);
    l = (m == -INFINITY ? 0.f : l * __expf(m - m_new)) + sum;
    m = m_new;
  }
  // Merge the two halves of each row (neighbouring lanes of one warp).
  const float m_other = __shfl_xor_sync(0xffffffffu, m, 1);
  const float l_other = __shfl_xor_sync(0xffffffffu, l, 1);
  const float m_all = fmaxf(m, m_other);
  if (half == 0 && i < p.na) {
    float total = 0.f;
    if (m != -INFINITY) total += l * __expf(m - m_all);
    if (m_other != -INFINITY) total += l_other * __expf(m_other - m_all);
    p.out[i] = m_all == -INFINITY ? -INFINITY : m_all + logf(total);
  }
}

// Weights of the weighted sum for the block's 64 x 64 tile, in place in s (0 where excluded).
__device__ inline void tile_weights(const Args& p, int64_t row0, int64_t col0, float* s) {
  const float scale = *p.scale;
  for (int idx = threadIdx.x; idx < BM * BN; idx += THREADS) {
    const int r = idx / BN, c = idx % BN;
    const int64_t i = row0 + r, j = col0 + c;
    float w = 0.f;
    if (i < p.na && j < p.nb && !(p.has_diag && j == i + p.diag)) {
      const float x = scale * s[r * S_LD + c];
      if (p.u) w += p.u[i] * __expf(x - p.lse_a[i]);
      if (p.v) w += p.v[j] * __expf(x - p.lse_b[j]);
    }
    s[r * S_LD + c] = w;
  }
}

// Tensor-core weighted sum: out[64, dp] += P[64, 64] @ b_tile[64, dp] with P = P_hi + P_lo,
// accumulated in registers across column tiles (NF = dp / 16 fragments per warp, NF <= 16).
template <typename T, int NF>
__global__ void __launch_bounds__(THREADS) weighted_sum_mma_kernel(Args p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int K = Mma<T>::K;
  constexpr bool HALF = sizeof(T) == 2;
  using E = typename Mma<T>::Elem;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, K, E, wmma::row_major>;
  const int dp = round_up(p.d, 16), ld = tile_ld<T>(dp), warp = threadIdx.x / 32;
  T* a_tile = reinterpret_cast<T*>(smem);
  T* b_tile = a_tile + BM * ld;
  float* s = reinterpret_cast<float*>(b_tile + BN * ld);
  // bfloat16: P_hi and P_lo tiles; float32: P stays in s and is split in the fragments.
  constexpr int P_LD = BN + 8;
  T* p_hi = reinterpret_cast<T*>(s + BM * S_LD);
  T* p_lo = p_hi + BM * P_LD;
  const int64_t row0 = int64_t(blockIdx.x) * BM;
  load_tile(static_cast<const T*>(p.a), p.na, p.d, dp, row0, a_tile);

  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[f], 0.f);
  for (int64_t col0 = 0; col0 < p.nb; col0 += BN) {
    __syncthreads();
    load_tile(static_cast<const T*>(p.b), p.nb, p.d, dp, col0, b_tile);
    __syncthreads();
    similarity_mma<T>(a_tile, b_tile, dp, s);
    __syncthreads();
    tile_weights(p, row0, col0, s);
    __syncthreads();
    if constexpr (HALF) {
      for (int idx = threadIdx.x; idx < BM * BN; idx += THREADS) {
        const float w = s[(idx / BN) * S_LD + idx % BN];
        const T hi = from_float<T>(w);
        p_hi[(idx / BN) * P_LD + idx % BN] = hi;
        p_lo[(idx / BN) * P_LD + idx % BN] = from_float<T>(w - to_float<T>(hi));
      }
      __syncthreads();
    }
    for (int k = 0; k < BN; k += K) {
      FragA fa_hi, fa_lo;
      if constexpr (HALF) {
        wmma::load_matrix_sync(fa_hi, p_hi + warp * 16 * P_LD + k, P_LD);
        wmma::load_matrix_sync(fa_lo, p_lo + warp * 16 * P_LD + k, P_LD);
      } else {
        wmma::load_matrix_sync(fa_hi, reinterpret_cast<const float*>(s) + warp * 16 * S_LD + k, S_LD);
        Mma<T>::split(fa_hi, fa_lo);
      }
#pragma unroll
      for (int f = 0; f < NF; ++f) {
        if (f * 16 >= dp) break;
        wmma::fragment<wmma::matrix_b, 16, 16, K, E, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, b_tile + k * ld + f * 16, ld);
        Mma<T>::round(fb);
        wmma::mma_sync(acc[f], fa_lo, fb, acc[f]);
        wmma::mma_sync(acc[f], fa_hi, fb, acc[f]);
      }
    }
  }
  // Stage through shared memory (the operand tiles are free now) to write only valid rows/columns.
  __syncthreads();
  float* staged = reinterpret_cast<float*>(smem);
  const int o_ld = dp + 4;
#pragma unroll
  for (int f = 0; f < NF; ++f)
    if (f * 16 < dp) wmma::store_matrix_sync(staged + warp * 16 * o_ld + f * 16, acc[f], o_ld, wmma::mem_row_major);
  __syncthreads();
  for (int idx = threadIdx.x; idx < BM * p.d; idx += THREADS) {
    const int r = idx / p.d, k = idx % p.d;
    if (row0 + r < p.na) p.out[(row0 + r) * p.d + k] = staged[r * o_ld + k];
  }
}

// Exact fp32 weighted sum: each thread owns row t / 2 and 32 features of a 64-feature chunk;
// the similarities are recomputed per chunk (exactness over speed).
__global__ void __launch_bounds__(THREADS) weighted_sum_exact_kernel(Args p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int dp = round_up(p.d, 16), ld = tile_ld<float>(dp);
  float* a_tile = reinterpret_cast<float*>(smem);
  float* b_tile = a_tile + BM * ld;
  float* s = b_tile + BN * ld;
  const int64_t row0 = int64_t(blockIdx.x) * BM;
  const int r = threadIdx.x / 2, half = threadIdx.x % 2;
  load_tile(static_cast<const float*>(p.a), p.na, p.d, dp, row0, a_tile);
  for (int d0 = 0; d0 < dp; d0 += 64) {
    float acc[32] = {};
    for (int64_t col0 = 0; col0 < p.nb; col0 += BN) {
      __syncthreads();
      load_tile(static_cast<const float*>(p.b), p.nb, p.d, dp, col0, b_tile);
      __syncthreads();
      similarity_exact(a_tile, b_tile, dp, s);
      __syncthreads();
      tile_weights(p, row0, col0, s);
      __syncthreads();
      for (int j = 0; j < BN; ++j) {
        const float w = s[r * S_LD + j];
#pragma unroll
        for (int c = 0; c < 32; ++c) {
          const int k = d0 + half * 32 + c;
          if (k < dp) acc[c] = fmaf(w, b_tile[j * ld + k], acc[c]);
        }
      }
    }
    const int64_t i = row0 + r;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int k = d0 + half * 32 + c;
      if (i < p.na && k < p.d) p.out[i * p.d + k] = acc[c];
    }
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Makes `device` current for its scope and puts the previous device back (also when a check throws).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

template <typename T>
size_t smem_bytes(int d) {
  const int dp = round_up(d, 16);
  size_t bytes = size_t(BM + BN) * tile_ld<T>(dp) * sizeof(T) + size_t(BM) * S_LD * sizeof(float);
  if (sizeof(T) == 2) bytes += 2 * size_t(BM) * (BN + 8) * sizeof(T);   // P_hi, P_lo in 16-bit
  return std::max(bytes, size_t(BM) * (dp + 4) * sizeof(float));        // output staging
}

// One kernel instantiation and the dynamic shared memory it is launched with.
struct Launch {
  void (*kernel)(Args);
  size_t smem;
};

template <typename T>
Launch weighted_sum_mma(int d) {
  const int dp = round_up(d, 16);
  const size_t smem = smem_bytes<T>(d);
  if (dp <= 64) return {weighted_sum_mma_kernel<T, 4>, smem};
  if (dp <= 128) return {weighted_sum_mma_kernel<T, 8>, smem};
  return {weighted_sum_mma_kernel<T, 16>, smem};
}

// The instantiation of `which` for `dtype` inputs of width d (exact: float32 FMAs, not TF32).
Launch pick(MultiposKernel which, DType dtype, bool exact, int d) {
  const bool lse = which == MultiposKernel::Lse;
  switch (dtype) {
    case DType::Float32:
      if (exact) return {lse ? lse_kernel<float, true> : weighted_sum_exact_kernel, smem_bytes<float>(d)};
      return lse ? Launch{lse_kernel<float, false>, smem_bytes<float>(d)} : weighted_sum_mma<float>(d);
    case DType::BFloat16:
      return lse ? Launch{lse_kernel<__nv_bfloat16, false>, smem_bytes<__nv_bfloat16>(d)}
                 : weighted_sum_mma<__nv_bfloat16>(d);
    default: throw std::invalid_argument(std::string("multipos (cuda): unsupported dtype ") + dtype_name(dtype));
  }
}

Args make_args(const MultiposProblem& p, const float* scale, const MultiposTerms& t, void* out) {
  check_arg(p.na >= 0 && p.nb >= 0 && p.d >= 1, "multipos (cuda): sizes must satisfy na, nb >= 0, d >= 1");
  check_arg(p.d <= MAX_D, "multipos (cuda): D must be <= " + std::to_string(MAX_D) + ", got " + std::to_string(p.d));
  check_arg(scale != nullptr, "multipos (cuda): null scale pointer");
  check_arg((t.u == nullptr) == (t.lse_a == nullptr) && (t.v == nullptr) == (t.lse_b == nullptr),
            "multipos (cuda): u/lse_a and v/lse_b go together");
  return Args{p.a, p.b, p.na, p.nb, int(p.d), scale, p.has_diag, p.diag,
              static_cast<const float*>(t.u), static_cast<const float*>(t.lse_a), static_cast<const float*>(t.v),
              static_cast<const float*>(t.lse_b), static_cast<float*>(out)};
}

}  // namespace

// The one launch site of the CUDA kernels: bindings.cpp -> multipos_cuda -> kernel<<<...>>>.
void multipos_cuda(MultiposKernel which, const MultiposProblem& p, const float* scale, DType dtype, bool exact,
                   const MultiposTerms& terms, void* out, int device, void* stream) {
  const bool lse = which == MultiposKernel::Lse;
  check_arg(!lse || (terms.u == nullptr && terms.v == nullptr), "multipos_lse (cuda): takes no weighted-sum terms");
  const Args args = make_args(p, scale, terms, out);
  const Launch launch = pick(which, dtype, exact, int(p.d));
  const auto s = static_cast<cudaStream_t>(stream);
  const DeviceScope on_device(device);
  if (!lse && terms.u == nullptr && terms.v == nullptr) {  // no term: the sum is zero
    check(cudaMemsetAsync(out, 0, size_t(p.na) * p.d * sizeof(float), s), "cudaMemsetAsync");
    return;
  }
  check(cudaFuncSetAttribute(launch.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(launch.smem)),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  const unsigned blocks = unsigned((p.na + BM - 1) / BM);
  if (blocks > 0) launch.kernel<<<blocks, THREADS, launch.smem, s>>>(args);
  check(cudaGetLastError(), lse ? "multipos_lse kernel launch" : "multipos_weighted_sum kernel launch");
}

}  // namespace srf
