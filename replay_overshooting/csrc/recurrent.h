// The pieces the recurrent baselines' C++ nodes share (07_baselines): PyTorch's GRU cell and the sampled Gaussian
// head, a step of each forward and backward on the B rows of one time step.
//
// GRU cell, from its pre-activations gi = W_i x + b_i and gh = W_h h' + b_h (gates r, z, n in that order):
//   r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r ⊙ gh_n),  h = (1 − z) ⊙ n + z ⊙ h'
// Gaussian head, from its pre-activation v:
//   a = ELU(v),  [μ, ρ] = W_o a + b_o,  σ = softplus(ρ) + σ_min,  s = μ + σ ⊙ ε
#pragma once
#include "mlp.h"

// Softplus is the identity above this input, as torch.nn.functional.softplus's default threshold.
constexpr double kSoftplusThreshold = 20;

template <typename T>
static T elu_slope(T y) { return y > 0 ? T(1) : y + T(1); }  // ELU'(v) from y = ELU(v): 1 above 0, e^v = y + 1 below

// The transcendental functions run through ATen's vectorised kernels, on the buffers in place: a scalar loop of
// std::exp and std::tanh took two thirds of the RSSM's forward pass.
template <typename T>
static void elu_inplace(T* x, int64_t size) {
  Tensor v = wrap(x, {size}, {1});
  at::elu_(v);
}

// columns [0, width) of each of `rows` rows `stride` apart
template <typename T>
static Tensor columns(T* x, int64_t rows, int64_t width, int64_t stride) {
  return wrap(x, {rows, width}, {stride, 1});
}

// rows × width of C = bias broadcast over the rows.
template <typename T>
static void fill_rows(T* C, const T* bias, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) std::copy(bias, bias + width, C + r * width);
}

// Σ over `rows` rows of G (rows × width) into `into` (width).
template <typename T>
static void column_sums(const T* G, int64_t rows, int64_t width, T* into) {
  std::fill(into, into + width, T(0));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < width; ++j) into[j] += G[r * width + j];
}

// softplus'(ρ) = σ(ρ) of every raw std, 1 above the threshold where softplus is the identity.
static Tensor softplus_slopes(const Tensor& raw) {
  Tensor slope = at::sigmoid(raw);
  return slope.masked_fill_(raw > kSoftplusThreshold, 1);
}

// One GRU step on B rows: gi, gh (B, 3D) and h_prev (B, D) give h (B, D); the gates after their nonlinearities
// (B, 3D) and gh's n part ĥ_n (B, D) are kept for the backward pass.
template <typename T>
static void gru_cell_forward(const T* gi, const T* gh, const T* h_prev, T* gates, T* hidden_n, T* h, int64_t B,
                             int64_t D) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < 2 * D; ++j) gates[b * 3 * D + j] = gi[b * 3 * D + j] + gh[b * 3 * D + j];
  Tensor rz = columns(gates, B, 2 * D, 3 * D);
  at::sigmoid_(rz);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < D; ++j) {
      hidden_n[b * D + j] = gh[b * 3 * D + 2 * D + j];
      gates[b * 3 * D + 2 * D + j] = gi[b * 3 * D + 2 * D + j] + gates[b * 3 * D + j] * hidden_n[b * D + j];
    }
  Tensor n_gate = columns(gates + 2 * D, B, D, 3 * D);
  at::tanh_(n_gate);
  for (int64_t b = 0; b < B; ++b) {
    const T *z = gates + b * 3 * D + D, *nn = z + D, *hp = h_prev + b * D;
    T* hb = h + b * D;
    for (int64_t j = 0; j < D; ++j) hb[j] = (T(1) - z[j]) * nn[j] + z[j] * hp[j];
  }
}

// Its backward: from g_h = ∂L/∂h (B, D), the gradients of the pre-activations, g_input = ∂L/∂gi and
// g_hidden = ∂L/∂gh (B, 3D), and the direct part of ∂L/∂h_prev, g_h ⊙ z (the caller adds W_hᵀ g_hidden):
//   ∂n⁻ = g_h ⊙ (1 − z) ⊙ (1 − n²),  ∂r⁻ = ∂n⁻ ⊙ ĥ_n ⊙ r ⊙ (1 − r),  ∂z⁻ = g_h ⊙ (h_prev − n) ⊙ z ⊙ (1 − z),
//   g_input = [∂r⁻, ∂z⁻, ∂n⁻],  g_hidden = [∂r⁻, ∂z⁻, r ⊙ ∂n⁻]
template <typename T>
static void gru_cell_backward(const T* gates, const T* hidden_n, const T* h_prev, const T* g_h, T* g_input,
                              T* g_hidden, T* g_h_prev, int64_t B, int64_t D) {
  for (int64_t b = 0; b < B; ++b) {
    const T *r = gates + b * 3 * D, *z = r + D, *nn = z + D, *hp = h_prev + b * D, *hnb = hidden_n + b * D,
            *gHb = g_h + b * D;
    T *gib = g_input + b * 3 * D, *ghb = g_hidden + b * 3 * D, *cb = g_h_prev + b * D;
    for (int64_t j = 0; j < D; ++j) {
      const T g_n_pre = gHb[j] * (T(1) - z[j]) * (T(1) - nn[j] * nn[j]);
      const T g_r_pre = g_n_pre * hnb[j] * r[j] * (T(1) - r[j]);
      const T g_z_pre = gHb[j] * (hp[j] - nn[j]) * z[j] * (T(1) - z[j]);
      gib[j] = ghb[j] = g_r_pre;
      gib[D + j] = ghb[D + j] = g_z_pre;
      gib[2 * D + j] = g_n_pre;
      ghb[2 * D + j] = g_n_pre * r[j];
      cb[j] = gHb[j] * z[j];
    }
  }
}

// The Gaussian head on B rows: a (B, H) holds the pre-activation v on entry and ELU(v) on return; w_o_t is W_oᵀ
// (H, 2n); writes μ, ρ, σ and the sample s (B, n) from the noise ε (B, n), with `out` (B, 2n) as scratch.
template <typename T>
static void gaussian_head_forward(T* a, const T* w_o_t, const T* b_o, const T* eps, T* mean, T* raw, T* std_dev,
                                  T* s, T* out, int64_t B, int64_t H, int64_t n, double min_std) {
  elu_inplace(a, B * H);
  fill_rows(out, b_o, B, 2 * n);
  gemm<T>(false, B, 2 * n, H, a, H, w_o_t, 2 * n, T(1), out, 2 * n);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) mean[b * n + j] = out[b * 2 * n + j], raw[b * n + j] = out[b * 2 * n + n + j];
  Tensor std_v = wrap(std_dev, {B * n}, {1});
  at::softplus_out(std_v, wrap(raw, {B * n}, {1}), 1, kSoftplusThreshold);
  for (int64_t i = 0; i < B * n; ++i) std_dev[i] += T(min_std), s[i] = mean[i] + std_dev[i] * eps[i];
}

// Its backward: from ∂L/∂s (g_s plus what later steps carry back, g_carry), ∂L/∂μ and ∂L/∂σ (B, n), with the
// softplus slopes (B, n) and a = ELU(v), writes ∂L/∂[μ, ρ] into go (B, 2n) and ∂L/∂v into g_v (B, H).
template <typename T>
static void gaussian_head_backward(const T* g_s, const T* g_carry, const T* g_mean, const T* g_std, const T* eps,
                                   const T* slope, const T* a, const T* w_o, T* go, T* g_v, int64_t B, int64_t H,
                                   int64_t n) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = b * n + j;
      const T gs = g_s[at] + g_carry[at];
      go[b * 2 * n + j] = g_mean[at] + gs;
      go[b * 2 * n + n + j] = (g_std[at] + gs * eps[at]) * slope[at];
    }
  gemm<T>(false, B, H, 2 * n, go, 2 * n, w_o, H, T(0), g_v, H);
  for (int64_t i = 0; i < B * H; ++i) g_v[i] *= elu_slope(a[i]);
}
