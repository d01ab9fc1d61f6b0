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
// sum: per k, two loads of B's row k, R broadcasts of op(A)[i, k], 2R fused multiply-adds. op(A) = Aᵀ costs nothing
// here: it only changes where the broadcast reads. Columns past N in the last tile are computed on a zero-padded
// copy of B's rows and not stored. The loops are written once, on GCC's vector types; `gemm` runs them
// compiled for AVX-512, for AVX2 with FMA, or for the x86-64 baseline, whichever the processor has.
template <typename T, int S>
struct Lanes {
  typedef T vector __attribute__((vector_size(S)));
  typedef T unaligned __attribute__((vector_size(S), aligned(sizeof(T))));
  static constexpr int count = S / sizeof(T), tile = 2 * count;
};

template <typename T, int S, int R>
static inline __attribute__((always_inline)) void gemm_tile(bool trans_a, int64_t K, const T* A, int64_t lda,
                                                            const T* Bp, int64_t ldp, T beta, T* C, int64_t ldc,
                                                            int64_t columns) {
  using V = typename Lanes<T, S>::vector;
  using U = typename Lanes<T, S>::unaligned;
  constexpr int n = Lanes<T, S>::count;
  V left[R], right[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) left[r] = V{}, right[r] = V{};
  const int64_t along_k = trans_a ? lda : 1, along_rows = trans_a ? 1 : lda;
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = *reinterpret_cast<const U*>(Bp + k * ldp), b1 = *reinterpret_cast<const U*>(Bp + k * ldp + n);
    const T* a = A + k * along_k;
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const T ar = a[r * along_rows];
      left[r] += ar * b0, right[r] += ar * b1;
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    T* c = C + r * ldc;
    if (columns == 2 * n) {
      U *c0 = reinterpret_cast<U*>(c), *c1 = reinterpret_cast<U*>(c + n);
      if (beta != T(0)) *c0 = *c0 + left[r], *c1 = *c1 + right[r];
      else *c0 = left[r], *c1 = right[r];
    } else {
      T sums[2 * n];
      std::memcpy(sums, &left[r], S), std::memcpy(sums + n, &right[r], S);
      for (int64_t q = 0; q < columns; ++q) c[q] = (beta != T(0) ? c[q] : T(0)) + sums[q];
    }
  }
}

template <typename T, int S>
static inline __attribute__((always_inline)) void tiled_gemm_body(bool trans_a, int64_t M, int64_t N, int64_t K,
                                                                  const T* A, int64_t lda, const T* B, int64_t ldb,
                                                                  T beta, T* C, int64_t ldc, T* padded_rows) {
  constexpr int W = Lanes<T, S>::tile, R = 6;
  const T* Bp = B;
  int64_t ldp = ldb;
  if (N % W) {  // B's rows, zero-padded to whole tiles
    ldp = (N + W - 1) / W * W;
    for (int64_t k = 0; k < K; ++k) {
      std::copy(B + k * ldb, B + k * ldb + N, padded_rows + k * ldp);
      std::fill(padded_rows + k * ldp + N, padded_rows + (k + 1) * ldp, T(0));
    }
    Bp = padded_rows;
  }
  auto rows_at = [&](int64_t i) { return trans_a ? A + i : A + i * lda; };
  for (int64_t j = 0; j < N; j += W) {
    const int64_t columns = std::min<int64_t>(W, N - j);
    int64_t i = 0;
    for (; i + R <= M; i += R)
      gemm_tile<T, S, R>(trans_a, K, rows_at(i), lda, Bp + j, ldp, beta, C + i * ldc + j, ldc, columns);
    T* c = C + i * ldc + j;
    switch (M - i) {
      case 1: gemm_tile<T, S, 1>(trans_a, K, rows_at(i), lda, Bp + j, ldp, beta, c, ldc, columns); break;
      case 2: gemm_tile<T, S, 2>(trans_a, K, rows_at(i), lda, Bp + j, ldp, beta, c, ldc, columns); break;
      case 3: gemm_tile<T, S, 3>(trans_a, K, rows_at(i), lda, Bp + j, ldp, beta, c, ldc, columns); break;
      case 4: gemm_tile<T, S, 4>(trans_a, K, rows_at(i), lda, Bp + j, ldp, beta, c, ldc, columns); break;
      case 5: gemm_tile<T, S, 5>(trans_a, K, rows_at(i), lda, Bp + j, ldp, beta, c, ldc, columns); break;
      default: break;
    }
  }
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
