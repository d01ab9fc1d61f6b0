// Row-major matrix products of the network passes and the RSSM, C = op(A) B + βC (03a, 'Matrix products').
#pragma once
#include "common.h"

// Every product of the network passes and the RSSM is C (M×N, row stride ldc) = op(A) B + beta C, op(A) = A
// (M×K, row stride lda) or Aᵀ (A K×M), and B (K×N, row stride ldb) read by contiguous rows: the weights are kept
// transposed beside the originals for the products by Wᵀ (`Layers`, the RSSM's forward). beta is 0 (C is
// overwritten, whatever it held) or 1. These products were MKL's sgemm_, called on raw pointers: at 16 to 256 rows
// it copies both operands into its own layout at every call, and scales C first when β = 0; in a push DT-EKF
// iteration on a Zen 3 core (AVX2, one thread) those copies and scalings took 11 % of the iteration beside 32 % in
// its multiply kernel. Alone, 16×64 by 64×64 took 1.9 µs through sgemm_ and 1.4 µs here, 128×64 by 64×64 11.6 µs
// and 11.2 µs. An ATen mm costs more again: a tensor, a dispatch and an allocation each.
//
// Each tile of C is R ≤ 6 rows by two vectors of S bytes (16 floats with AVX2), kept in 2R registers over the whole
// sum: per k, two loads of B's row k, R broadcasts of op(A)[i, k], 2R fused multiply-adds; a last tile at most one
// vector wide is R ≤ 8 rows by one vector. op(A) = Aᵀ costs nothing here: it only changes where the broadcast
// reads. Columns past N in the last vector are computed on a zero-padded copy of B's rows and not stored. The loops
// are written once, on GCC's vector types; `gemm` runs them compiled for AVX-512, for AVX2 with FMA, or for the
// x86-64 baseline, whichever the processor has.
template <typename T, int S>
struct Lanes {
  typedef T vector __attribute__((vector_size(S)));
  typedef T unaligned __attribute__((vector_size(S), aligned(sizeof(T))));
  static constexpr int count = S / sizeof(T), tile = 2 * count;
};

// One tile: R rows of C by V vectors (V = 2, or 1 for a last tile at most one vector wide), its sums held in R·V
// registers over all of K. Each k loads V vectors of B's row k and broadcasts R elements of op(A)'s column k.
template <typename T, int S, int R, int V>
static inline __attribute__((always_inline)) void gemm_tile(bool trans_a, int64_t K, const T* A, int64_t lda,
                                                            const T* Bp, int64_t ldp, T beta, T* C, int64_t ldc,
                                                            int64_t columns) {
  using Vec = typename Lanes<T, S>::vector;
  using U = typename Lanes<T, S>::unaligned;
  constexpr int n = Lanes<T, S>::count;
  Vec sums[R][V];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) sums[r][v] = Vec{};
  const int64_t along_k = trans_a ? lda : 1, along_rows = trans_a ? 1 : lda;
  for (int64_t k = 0; k < K; ++k) {
    Vec b[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) b[v] = *reinterpret_cast<const U*>(Bp + k * ldp + v * n);
    const T* a = A + k * along_k;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const T ar = a[r * along_rows];
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) sums[r][v] += ar * b[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    T* c = C + r * ldc;
    if (columns == V * n) {
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        U* cv = reinterpret_cast<U*>(c + v * n);
        *cv = beta != T(0) ? *cv + sums[r][v] : sums[r][v];
      }
    } else {
      T kept[V * n];
      std::memcpy(kept, sums[r], sizeof(kept));
      for (int64_t q = 0; q < columns; ++q) c[q] = (beta != T(0) ? c[q] : T(0)) + kept[q];
    }
  }
}

// Rows [i, M) of one column tile, R at a time, then the R − 1 or fewer left over.
template <typename T, int S, int R, int V>
static inline __attribute__((always_inline)) void gemm_rows(bool trans_a, int64_t i, int64_t M, int64_t K,
                                                            const T* A, int64_t lda, const T* Bp, int64_t ldp,
                                                            T beta, T* C, int64_t ldc, int64_t columns) {
  for (; i + R <= M; i += R)
    gemm_tile<T, S, R, V>(trans_a, K, trans_a ? A + i : A + i * lda, lda, Bp, ldp, beta, C + i * ldc, ldc, columns);
  if (i == M) return;
  if constexpr (R > 1) gemm_rows<T, S, R - 1, V>(trans_a, i, M, K, A, lda, Bp, ldp, beta, C, ldc, columns);
}

// C's columns from j, every row: two vectors wide while more than one vector's columns are left, else one
// (so that an output one vector wide, the 8 columns of the push Jacobian's rows with AVX2, wastes no lanes). A
// narrow tile takes 8 rows, so that its 8 sums, like the wide tile's 12, cover the latency of the fused
// multiply-adds. Returns the next column. (Not a lambda: a lambda would not take the caller's target ISA.)
template <typename T, int S>
static inline __attribute__((always_inline)) int64_t gemm_column_tile(bool trans_a, int64_t M, int64_t j, int64_t N,
                                                                     int64_t K, const T* A, int64_t lda, const T* Bp,
                                                                     int64_t ldp, T beta, T* C, int64_t ldc) {
  constexpr int n = Lanes<T, S>::count;
  const int64_t columns = N - j;
  if (columns > n) {
    gemm_rows<T, S, 6, 2>(trans_a, 0, M, K, A, lda, Bp + j, ldp, beta, C + j, ldc, std::min<int64_t>(columns, 2 * n));
    return j + 2 * n;
  }
  gemm_rows<T, S, 8, 1>(trans_a, 0, M, K, A, lda, Bp + j, ldp, beta, C + j, ldc, columns);
  return j + n;
}

template <typename T, int S>
static inline __attribute__((always_inline)) void tiled_gemm_body(bool trans_a, int64_t M, int64_t N, int64_t K,
                                                                  const T* A, int64_t lda, const T* B, int64_t ldb,
                                                                  T beta, T* C, int64_t ldc, T* padded_rows) {
  constexpr int n = Lanes<T, S>::count;
  const T* Bp = B;
  int64_t ldp = ldb;
  if (N % n) {  // B's rows, zero-padded to whole vectors
    ldp = (N + n - 1) / n * n;
    for (int64_t k = 0; k < K; ++k) {
      std::copy(B + k * ldb, B + k * ldb + N, padded_rows + k * ldp);
      std::fill(padded_rows + k * ldp + N, padded_rows + (k + 1) * ldp, T(0));
    }
    Bp = padded_rows;
  }
  for (int64_t j = 0; j < N;) j = gemm_column_tile<T, S>(trans_a, M, j, N, K, A, lda, Bp, ldp, beta, C, ldc);
}

// The scratch a product with N columns over K rows needs for B's zero-padded rows, at the widest tile.
template <typename T>
static size_t padded_rows_size(int64_t K, int64_t N) { return K * (N + Lanes<T, 64>::tile); }

#define TILED_GEMM_PARAMETERS                                                                                     \
  bool trans_a, int64_t M, int64_t N, int64_t K, const T *A, int64_t lda, const T *B, int64_t ldb, T beta, T *C, \
      int64_t ldc, T *padded_rows
#define TILED_GEMM_ARGUMENTS trans_a, M, N, K, A, lda, B, ldb, beta, C, ldc, padded_rows

#if defined(__x86_64__) && defined(__GNUC__)
template <typename T>
__attribute__((target("avx512f"))) void tiled_gemm_avx512(TILED_GEMM_PARAMETERS) {
  tiled_gemm_body<T, 64>(TILED_GEMM_ARGUMENTS);
}
template <typename T>
__attribute__((target("avx2,fma"))) void tiled_gemm_avx2(TILED_GEMM_PARAMETERS) {
  tiled_gemm_body<T, 32>(TILED_GEMM_ARGUMENTS);
}
#endif

// The body compiled for this build's own target, with vectors of `S` bytes (16, 32 or 64: any of them runs on any
// processor, which lets the tests check each width here).
template <typename T, int S>
void tiled_gemm_portable(TILED_GEMM_PARAMETERS) { tiled_gemm_body<T, S>(TILED_GEMM_ARGUMENTS); }

// C (M×N) = op(A) B + beta C, as above.
template <typename T>
static void gemm(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
                 T beta, T* C, int64_t ldc) {
  thread_local std::vector<T> padding;  // kept from call to call, like the network passes' scratch buffers
  T* padded_rows = nullptr;
  if (N % Lanes<T, 64>::tile) {
    padding.resize(std::max(padding.size(), padded_rows_size<T>(K, N)));
    padded_rows = padding.data();
  }
#if defined(__x86_64__) && defined(__GNUC__)
  static const int isa = __builtin_cpu_supports("avx512f") ? 2
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
  if (isa == 2) return tiled_gemm_avx512<T>(TILED_GEMM_ARGUMENTS);
  if (isa == 1) return tiled_gemm_avx2<T>(TILED_GEMM_ARGUMENTS);
#endif
  tiled_gemm_portable<T, 16>(TILED_GEMM_ARGUMENTS);
}

// `op(A) B + beta C` into C, through `gemm` (`vector_bytes` 0) or through its portable body with vectors of
// 16, 32 or 64 bytes, for the tests. A is (M, K), or (K, M) with `trans_a`; B (K, N); C (M, N); each with unit
// column stride and any row stride.
static void tiled_matmul(const Tensor& A, const Tensor& B, const Tensor& C, bool trans_a, double beta,
                         int64_t vector_bytes) {
  for (const Tensor* X : {&A, &B, &C})
    TORCH_CHECK(X->dim() == 2 && (X->stride(1) == 1 || X->size(1) <= 1) && X->scalar_type() == C.scalar_type(),
                "tiled_matmul takes matrices of one dtype with unit column stride");
  const int64_t M = C.size(0), N = C.size(1), K = B.size(0);
  TORCH_CHECK(A.size(trans_a ? 1 : 0) == M && A.size(trans_a ? 0 : 1) == K && B.size(1) == N,
              "tiled_matmul: shapes do not match");
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "tiled_matmul", [&] {
    using T = scalar_t;
    const T *a = A.const_data_ptr<T>(), *b = B.const_data_ptr<T>();
    const int64_t lda = A.stride(0), ldb = B.stride(0), ldc = C.stride(0);
    T* c = C.data_ptr<T>();
    const T scale = static_cast<T>(beta);
    if (vector_bytes == 0) return gemm<T>(trans_a, M, N, K, a, lda, b, ldb, scale, c, ldc);
    TORCH_CHECK(vector_bytes == 16 || vector_bytes == 32 || vector_bytes == 64,
                "tiled_matmul: vector_bytes is 0, 16, 32 or 64");
    auto body = vector_bytes == 16 ? tiled_gemm_portable<T, 16>
                : vector_bytes == 32 ? tiled_gemm_portable<T, 32> : tiled_gemm_portable<T, 64>;
    std::vector<T> padded_rows(padded_rows_size<T>(K, N));
    body(trans_a, M, N, K, a, lda, b, ldb, scale, c, ldc, padded_rows.data());
  });
}
