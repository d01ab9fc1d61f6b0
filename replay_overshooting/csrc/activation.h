// Softplus and its slope in one pass (03a, 'The MLP's value and Jacobian').
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Both come from one exponential: with e = exp(−|a|) in (0, 1],
//   softplus(a) = max(a, 0) + log1p(e),   sigmoid(a) = 1 / (1 + e) for a ≥ 0 and e / (1 + e) for a < 0,
// and neither cancels nor overflows anywhere. Through ATen they were two calls (softplus, then sigmoid, each
// with its own exponential, and softplus's `log1p` in Sleef's 1-ulp variant), some 2 ns an element plus a
// dispatch each: about 8 % of a push DT-EKF training iteration. Here the loop is straight-line arithmetic that
// the compiler vectorises: exp by range reduction and a Taylor polynomial, log1p by its atanh series. Within
// 2 ulp of torch's in float and double (`tests/test_native.py`).
template <typename T>
struct SoftplusConstants;

template <>
struct SoftplusConstants<float> {
  using Bits = int32_t;
  static constexpr int mantissa = 23, bias = 127;
  static constexpr float lowest = -87.0f;  // exp below this is under float's smallest normal: taken as 0
  static constexpr int exp_terms = 8;      // Taylor terms of e^r, |r| ≤ ln2/2: error below 0.35^8/8! ≈ 5e-9
  static constexpr int log_terms = 7;      // atanh terms, s ≤ 1/3: error below (1/9)^7/15 ≈ 1.4e-8
};

template <>
struct SoftplusConstants<double> {
  using Bits = int64_t;
  static constexpr int mantissa = 52, bias = 1023;
  static constexpr double lowest = -708.0;
  static constexpr int exp_terms = 14;  // below 0.35^14/14! ≈ 5e-18
  static constexpr int log_terms = 17;  // below (1/9)^17/35 ≈ 5e-18
};

// exp(x) for x ≤ 0: x = k ln2 + r with k = round(x / ln2), then e^r · 2^k, the power built in the exponent bits.
template <typename T>
static inline T exp_nonpositive(T x) {
  using C = SoftplusConstants<T>;
  using Bits = typename C::Bits;
  const T kept = static_cast<T>(x >= T(C::lowest));  // 1, or 0 where e^x vanishes
  x = std::max(x, T(C::lowest));
  const int32_t k = static_cast<int32_t>(x * T(1.4426950408889634) - T(0.5));  // truncation rounds a negative up
  const T kf = static_cast<T>(k);
  const T r = (x - kf * T(0.693145751953125)) - kf * T(1.4286068203094172e-06);  // ln2 in two parts
  T p = T(1);
  for (int i = C::exp_terms - 1; i >= 1; --i) p = T(1) + p * (r * (T(1) / T(i)));
  const Bits bits = static_cast<Bits>(k + C::bias) << C::mantissa;
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  return p * scale * kept;  // a product, not a select: GCC would not vectorise the loop around a select here
}

// log1p(e) for e in [0, 1]: 2 atanh(s) = 2 (s + s³/3 + s⁵/5 + …) with s = e / (2 + e) ≤ 1/3, relative accuracy
// kept as e → 0.
template <typename T>
static inline T log1p_unit(T e) {
  const T s = e / (T(2) + e), s2 = s * s;
  T series = T(0);
  for (int i = SoftplusConstants<T>::log_terms - 1; i >= 0; --i) series = T(1) / T(2 * i + 1) + s2 * series;
  return T(2) * s * series;
}

// h = softplus(a) (the identity above `linear_above`, as torch's threshold) and a ← sigmoid(a), its slope;
// `size` elements.
template <typename T>
static inline __attribute__((always_inline)) void softplus_and_slope_loop(T* __restrict a, T* __restrict h,
                                                                            int64_t size, T linear_above) {
  for (int64_t i = 0; i < size; ++i) {
    const T x = a[i], positive = std::max(x, T(0));
    const T e = exp_nonpositive(-std::fabs(x));
    const T inverse = T(1) / (T(1) + e), small = e * inverse, value = positive + log1p_unit(e);
    h[i] = x > linear_above ? x : value;  // every term computed unconditionally and then selected, so that
    a[i] = x >= T(0) ? inverse : small;   // the loop has no branches and vectorises
  }
}

// The loop compiled for AVX-512, AVX2 and the x86-64 baseline; when the library loads, the processor's widest is
// chosen (GCC's function multiversioning), as ATen chooses its kernels. It vectorises only with
// `-fno-trapping-math` (`native._build`), which lets the compiler compute both sides of a select.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WIDEST_VECTORS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST_VECTORS
#endif

WIDEST_VECTORS static void softplus_and_slope(float* a, float* h, int64_t size, float linear_above) {
  softplus_and_slope_loop(a, h, size, linear_above);
}

WIDEST_VECTORS static void softplus_and_slope(double* a, double* h, int64_t size, double linear_above) {
  softplus_and_slope_loop(a, h, size, linear_above);
}
