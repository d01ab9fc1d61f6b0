// The EKF's time and measurement updates and their adjoints (03a, 'The EKF steps').
#pragma once
#include "mlp.h"

// One batch element of a tensor whose dimensions after the first are contiguous (copied to be so if not);
// the batch stride may be 0 (an expanded R).
static Tensor inner_contiguous(const Tensor& X) {
  int64_t expected = 1;
  for (int64_t d = X.dim() - 1; d >= 1; --d) {
    if (X.size(d) != 1 && X.stride(d) != expected) return X.contiguous();
    expected *= X.size(d);
  }
  return X;
}

// A tensor's batch elements as the loops read them: its data and batch stride, taken once (each `data_ptr` call
// checks the type and the storage, about 1.5 % of a push iteration when the loops made one per element).
template <typename T>
struct Elements {
  const T* data;
  int64_t stride;
  explicit Elements(const Tensor& X) : data(X.const_data_ptr<T>()), stride(X.stride(0)) {}
  const T* operator[](int64_t b) const { return data + b * stride; }
};

// Small row-major matrices of one batch element. `out = scale · op(A) op(B)`, or `out += ...` when accumulating,
// where op(X) is Xᵀ when its flag is set; A is r×k (k×r transposed) and B is k×c (c×k transposed); `out` is
// neither. Each row of `out` gathers scaled rows of B, an inner loop over contiguous memory that the compiler
// vectorises. Bᵀ is first copied out by rows: read as it lies, each element of `out` would be a dot product, a
// serial sum that does not vectorise (without reassociating the sum, which changes its rounding), and the
// covariance sandwiches of a push iteration spent most of their time in those sums. (Every `scale` used is ±1 or
// ±2, so scaling the terms instead of their sum rounds the same.)
template <bool TransposeA, bool TransposeB, bool Accumulate = false, typename T>
static inline void product(T* __restrict out, const T* __restrict A, const T* __restrict B, int64_t r, int64_t k,
                           int64_t c, T scale = T(1)) {
  if constexpr (TransposeB) {
    thread_local std::vector<T> rows;  // Bᵀ, k×c; kept from call to call
    if (static_cast<int64_t>(rows.size()) < k * c) rows.resize(k * c);
    for (int64_t j = 0; j < c; ++j)
      for (int64_t l = 0; l < k; ++l) rows[l * c + j] = B[j * k + l];
    product<TransposeA, false, Accumulate>(out, A, rows.data(), r, k, c, scale);
  } else {
    for (int64_t i = 0; i < r; ++i) {
      T* __restrict row = out + i * c;
      if (!Accumulate) std::fill(row, row + c, T(0));
      for (int64_t l = 0; l < k; ++l) {
        const T a = scale * (TransposeA ? A[l * r + i] : A[i * k + l]);
        const T* __restrict Bl = B + l * c;
        for (int64_t j = 0; j < c; ++j) row[j] += a * Bl[j];
      }
    }
  }
}

template <typename T>
static inline void symmetric_part(T* out, const T* M, int64_t n) {  // (M + Mᵀ)/2, into another buffer
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) out[i * n + j] = T(0.5) * (M[i * n + j] + M[j * n + i]);
}

// The loops pay while the state is small: at batch 16 a whole iteration was 10 % faster with them at n = 12,
// even at n = 16 and 25 % slower at n = 24, where batched ATen products (MKL) do the n³ work faster. Larger
// states take the ATen operations of the Python functions instead.
constexpr int64_t kLoopStateLimit = 12;
static bool loops_pay(int64_t n) { return n <= kLoopStateLimit; }

// out = sym(A Σ Aᵀ + Q) for one batch element, A r×n, Σ n×n, Q r×r; scratch AP (r·n) and X (r·r).
template <typename T>
static inline void sandwich(T* out, const T* A, const T* P, const T* Q, int64_t r, int64_t n, T* AP, T* X) {
  product<false, false>(AP, A, P, r, n, n);
  std::copy(Q, Q + r * r, X);
  product<false, true, true>(X, AP, A, r, n, r);
  symmetric_part(out, X, r);
}

// Its backward, Σ symmetric: G = sym(∂out) (which is ∂Q), ∂A += 2 G A Σ, ∂Σ = Aᵀ G A; scratch GA (r·n).
template <typename T>
static inline void sandwich_backward(T* G, T* grad_A, T* grad_P, const T* A, const T* P, const T* grad_out,
                                     int64_t r, int64_t n, T* GA) {
  symmetric_part(G, grad_out, r);
  product<false, false>(GA, G, A, r, r, n);
  product<false, false, true>(grad_A, GA, P, r, n, n, T(2));
  product<true, false>(grad_P, A, GA, n, r, n);
}

// Σ⁺ = sym(A Σ Aᵀ + Q) with A = J + I, one batch element at a time, into `next` (B, n, n); `A` holds J on entry
// and A on return. Both are contiguous within an element, at any batch stride (a step's rows of a recursion's
// outputs).
static void propagate_covariance(const Tensor& A, const Tensor& cov_in, const Tensor& Q_in, const Tensor& next) {
  const int64_t B = cov_in.size(0), n = cov_in.size(-1), nn = n * n;
  if (!loops_pay(n)) {
    A.add_(at::eye(n, cov_in.options()));
    next.copy_(symmetrize(at::baddbmm(Q_in, at::bmm(A, cov_in), mT(A))));
    return;
  }
  Tensor cov = inner_contiguous(cov_in), Q = inner_contiguous(Q_in.expand({B, n, n}));
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "propagate_covariance", [&] {
    using T = scalar_t;
    std::vector<T> AP(nn), X(nn);
    const Elements<T> covs(cov), Qs(Q);
    T *As = A.data_ptr<T>(), *nexts = next.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      T* Ab = As + b * A.stride(0);
      for (int64_t i = 0; i < nn; i += n + 1) Ab[i] += T(1);
      sandwich(nexts + b * next.stride(0), Ab, covs[b], Qs[b], n, n, AP.data(), X.data());
    }
  });
}

// The covariance part of its backward: G = sym(∂Σ⁺), ∂J = ∂A + 2 G A Σ, ∂Σ = Aᵀ G A; returns {∂Σ, ∂J, G}.
static std::tuple<Tensor, Tensor, Tensor> propagate_covariance_backward(const Tensor& A_in, const Tensor& cov_in,
                                                                        const Tensor& grad_next_in,
                                                                        const Tensor& grad_A_in) {
  const int64_t B = cov_in.size(0), n = cov_in.size(-1), nn = n * n;
  if (!loops_pay(n)) {
    Tensor G = symmetrize(grad_next_in), GA = at::bmm(G, A_in);
    Tensor grad_J = grad_A_in.defined() ? at::baddbmm(grad_A_in, GA, cov_in, 1, 2) : at::bmm(GA, cov_in).mul_(2);
    return {at::bmm(mT(A_in), GA), grad_J, G};
  }
  Tensor A = inner_contiguous(A_in), cov = inner_contiguous(cov_in), Gc = inner_contiguous(grad_next_in);
  Tensor grad_A = grad_A_in.defined() ? inner_contiguous(grad_A_in) : at::zeros({B, n, n}, cov.options());
  Tensor grad_cov = at::empty({B, n, n}, cov.options()), grad_J = at::empty({B, n, n}, cov.options());
  Tensor G = at::empty({B, n, n}, cov.options());
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "propagate_covariance_backward", [&] {
    using T = scalar_t;
    std::vector<T> GA(nn);
    const Elements<T> grad_As(grad_A), As(A), covs(cov), Gcs(Gc);
    T *gJs = grad_J.data_ptr<T>(), *Gs = G.data_ptr<T>(), *grad_covs = grad_cov.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const T* gA = grad_As[b];
      T* gJ = gJs + b * nn;
      std::copy(gA, gA + nn, gJ);
      sandwich_backward(Gs + b * nn, gJ, grad_covs + b * nn, As[b], covs[b], Gcs[b], n, n, GA.data());
    }
  });
  return {grad_cov, grad_J, G};
}

// S = sym(C Σ Cᵀ + R) `(N, p, p)` of the observation moments of whole windows (`ekf.observation_moments`):
// C `(N, p, n)`, Σ `(N, n, n)`, R `(N, p, p)`, N = B·T. ATen's batched products of 2×8 by 8×8 matrices cost
// about 0.2-0.5 ms each at push size, nearly all per-matrix overhead.
static Tensor observation_covariance(const Tensor& C_in, const Tensor& cov_in, const Tensor& R_in) {
  const int64_t N = cov_in.size(0), n = cov_in.size(-1), p = C_in.size(1);
  if (!loops_pay(n)) return symmetrize(at::baddbmm(R_in, at::bmm(C_in, cov_in), mT(C_in)));
  Tensor C = inner_contiguous(C_in), cov = inner_contiguous(cov_in), R = inner_contiguous(R_in);
  Tensor S = at::empty({N, p, p}, cov.options());
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "observation_covariance", [&] {
    using T = scalar_t;
    std::vector<T> CP(p * n), X(p * p);
    const Elements<T> Cs(C), covs(cov), Rs(R);
    T* Ss = S.data_ptr<T>();
    for (int64_t b = 0; b < N; ++b) sandwich(Ss + b * p * p, Cs[b], covs[b], Rs[b], p, n, CP.data(), X.data());
  });
  return S;
}

// Its backward: {∂C, ∂Σ, ∂R}.
static Tensors observation_covariance_backward(const Tensor& C_in, const Tensor& cov_in, const Tensor& grad_S_in) {
  const int64_t N = cov_in.size(0), n = cov_in.size(-1), p = C_in.size(1);
  if (!loops_pay(n)) {
    Tensor G = symmetrize(grad_S_in), GC = at::bmm(G, C_in);
    return {at::bmm(GC, cov_in).mul_(2), at::bmm(mT(C_in), GC), G};
  }
  Tensor C = inner_contiguous(C_in), cov = inner_contiguous(cov_in), grad_S = inner_contiguous(grad_S_in);
  Tensor grad_C = at::zeros({N, p, n}, cov.options()), grad_cov = at::empty({N, n, n}, cov.options());
  Tensor G = at::empty({N, p, p}, cov.options());
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "observation_covariance_backward", [&] {
    using T = scalar_t;
    std::vector<T> GC(p * n);
    const Elements<T> Cs(C), covs(cov), grad_Ss(grad_S);
    T *Gs = G.data_ptr<T>(), *grad_Cs = grad_C.data_ptr<T>(), *grad_covs = grad_cov.data_ptr<T>();
    for (int64_t b = 0; b < N; ++b)
      sandwich_backward(Gs + b * p * p, grad_Cs + b * p * n, grad_covs + b * n * n, Cs[b], covs[b], grad_Ss[b], p, n,
                        GC.data());
  });
  return {grad_C, grad_cov, G};
}

// One time update into `next_mean` (B, n), `next_cov` and `A` (B, n, n), each contiguous within an element:
// μ⁺ = μ + f([μ, u]), A = I + ∂f/∂μ, Σ⁺ = sym(A Σ Aᵀ + Q).
static void time_update(const Tensor& mean, const Tensor& cov, const Tensor& u, const Tensor& Q, const Layers& L,
                        MLPSaved& s, const Tensor& next_mean, const Tensor& next_cov, const Tensor& A) {
  mlp_forward_into(mean, L, s, u, mean, next_mean, A);  // A holds J until `propagate_covariance` adds I
  propagate_covariance(A, cov, Q, next_cov);
}

// a + b, or (a + b) + c, elementwise into a new contiguous tensor: tensors of one shape, each contiguous within an
// element at any batch stride. One loop where ATen's additions cost a dispatch and an iterator each, several
// times per step of the backward recursions; sums rounded as ATen's, left to right.
static Tensor sum_of(const Tensor& a_in, const Tensor& b_in, const Tensor& c_in = Tensor()) {
  Tensor a = inner_contiguous(a_in), b = inner_contiguous(b_in), c = c_in.defined() ? inner_contiguous(c_in) : Tensor();
  Tensor out = at::empty(a.sizes(), a.options());
  const int64_t B = a.size(0), inner = B ? a.numel() / B : 0;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sum_of", [&] {
    using T = scalar_t;
    const Elements<T> as(a), bs(b);
    T* o = out.data_ptr<T>();
    for (int64_t e = 0; e < B; ++e) {
      const T *x = as[e], *y = bs[e];
      T* z = o + e * inner;
      for (int64_t i = 0; i < inner; ++i) z[i] = x[i] + y[i];
    }
    if (!c.defined()) return;
    const Elements<T> cs(c);
    for (int64_t e = 0; e < B; ++e) {
      const T* x = cs[e];
      T* z = o + e * inner;
      for (int64_t i = 0; i < inner; ++i) z[i] += x[i];
    }
  });
  return out;
}

struct TimeUpdateGrads {
  Tensor mean, cov, u, Q;
};

static TimeUpdateGrads time_update_backward(const Layers& L, const MLPSaved& s, const Tensor& cov, const Tensor& A,
                                            const Tensor& grad_mean, const Tensor& grad_cov, const Tensor& grad_A,
                                            bool has_controls, WeightGradients& weight_grads) {
  auto [grad_prev_cov, grad_J, G] = propagate_covariance_backward(A, cov, grad_cov, grad_A);
  Tensor grad_x = mlp_backward_to_input(s, L, grad_mean, grad_J, weight_grads);
  const int64_t n = A.size(-1);
  Tensor grad_u = has_controls ? grad_x.slice(1, n) : Tensor();
  return {sum_of(grad_x.slice(1, 0, n), grad_mean), grad_prev_cov, grad_u, G};
}

// One time update as an autograd node of its own (`ResidualDynamics.propagate_belief` on CPU).
struct TimeUpdateTape {
  Layers layers;
  MLPSaved saved;
  bool has_controls;
};

static std::tuple<Tensor, Tensor, Tensor, std::shared_ptr<TimeUpdateTape>> time_update_forward(
    const Tensor& mean, const Tensor& cov, const std::optional<Tensor>& u, const Tensor& Q, const Tensors& params,
    int64_t activation, double beta) {
  NativeScope scope;
  auto tape = std::make_shared<TimeUpdateTape>();
  tape->layers = make_layers(params, activation, beta, mean.size(-1));
  tape->has_controls = u.has_value();
  const int64_t B = mean.size(0), n = mean.size(-1);
  Tensor next_mean = at::empty({B, n}, mean.options()), next_cov = at::empty({B, n, n}, cov.options());
  Tensor A = at::empty({B, n, n}, cov.options());
  time_update(mean, cov, u.has_value() ? *u : Tensor(), Q, tape->layers, tape->saved, next_mean, next_cov, A);
  return {next_mean, next_cov, A, tape};
}

// The gradients of the time update's inputs, by name: `mean`, `cov`, `u`, `dynamics_cov` and the dynamics
// network's `weights` in `MLP.parameter_list` order.
static Named time_update_backward_node(const TimeUpdateTape& tape, const Tensor& cov, const Tensor& A,
                                       const Tensor& grad_mean, const Tensor& grad_cov, const Tensor& grad_A) {
  NativeScope scope;
  WeightGradients weight_grads{&tape.layers};
  auto back = time_update_backward(tape.layers, tape.saved, cov, A, grad_mean, grad_cov, grad_A, tape.has_controls,
                                   weight_grads);
  Named out;
  out["mean"] = back.mean;
  out["cov"] = back.cov;
  out["u"] = back.u;
  out["dynamics_cov"] = back.Q;
  out["weights"] = weight_grads.result();
  return out;
}

struct KalmanSaved {
  Tensor Kt, s, gain_step, M;  // Kᵀ (B,p,n), S⁻¹(y − ŷ) (B,p,1), its gain (B,1,n), I − K C (B,n,n)
};

// L ← the lower Cholesky factor of one n×n matrix A (its lower triangle read; L's upper triangle left as it is).
// Returns 0, or as LAPACK's potrf the order of the first leading minor that is not positive definite (a NaN
// included); the columns from there on are not a factor (NaN, from the square root of a negative pivot).
template <typename T>
static inline int32_t cholesky_factor(const T* A, T* L, int64_t n) {
  int32_t info = 0;
  for (int64_t j = 0; j < n; ++j) {
    T pivot = A[j * n + j];
    for (int64_t k = 0; k < j; ++k) pivot -= L[j * n + k] * L[j * n + k];
    if (!(pivot > T(0)) && info == 0) info = static_cast<int32_t>(j + 1);
    const T root = std::sqrt(pivot);
    L[j * n + j] = root;
    for (int64_t i = j + 1; i < n; ++i) {
      T sum = A[i * n + j];
      for (int64_t k = 0; k < j; ++k) sum -= L[i * n + k] * L[j * n + k];
      L[i * n + j] = sum / root;
    }
  }
  return info;
}

// X ← L⁻¹ X for one n×n lower triangular L and n×k right-hand sides X (forward substitution).
template <typename T>
static inline void forward_substitution(const T* L, T* X, int64_t n, int64_t k) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t l = 0; l < i; ++l)
      for (int64_t j = 0; j < k; ++j) X[i * k + j] -= L[i * n + l] * X[l * k + j];
    for (int64_t j = 0; j < k; ++j) X[i * k + j] /= L[i * n + i];
  }
}

// X ← (LLᵀ)⁻¹ X for one n×n lower Cholesky factor L and n×k right-hand sides X: forward, then back substitution.
template <typename T>
static inline void cholesky_solve_in_place(const T* L, T* X, int64_t n, int64_t k) {
  forward_substitution(L, X, n, k);
  for (int64_t i = n - 1; i >= 0; --i) {
    for (int64_t l = i + 1; l < n; ++l)
      for (int64_t j = 0; j < k; ++j) X[i * k + j] -= L[l * n + i] * X[l * k + j];
    for (int64_t j = 0; j < k; ++j) X[i * k + j] /= L[i * n + i];
  }
}

// inverse ← (LLᵀ)⁻¹ `(n, n)` from one lower Cholesky factor L: the identity solved in place.
template <typename T>
static inline void inverse_from_factor(const T* L, T* inverse, int64_t n) {
  for (int64_t i = 0; i < n * n; ++i) inverse[i] = i % (n + 1) == 0 ? T(1) : T(0);
  cholesky_solve_in_place(L, inverse, n, n);
}

// `torch.linalg.cholesky_ex(M)` for batches `(..., n, n)` of small matrices, as the Gaussian nodes factorise their
// covariances: the lower factor L (zeros above) and `info` `(...)`, 0 or, as LAPACK's potrf says it, the order of
// the first leading minor that is not positive definite (NaN included); only M's lower triangle is read. ATen's
// call on 800 systems of 8×8 took some 0.3 ms, most of it per-matrix overhead and the `tril` after LAPACK.
static std::tuple<Tensor, Tensor> small_cholesky_ex(const Tensor& M_in) {
  NativeScope scope;
  const int64_t n = M_in.size(-1);
  if (!loops_pay(n) || M_in.dim() < 2) return at::linalg_cholesky_ex(M_in);
  Tensor M = M_in.contiguous(), L = at::zeros_like(M);
  Tensor info = at::zeros(M.sizes().slice(0, M.dim() - 2), M.options().dtype(at::kInt));
  const int64_t N = info.numel(), nn = n * n;
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "small_cholesky_ex", [&] {
    using T = scalar_t;
    const T* m = M.const_data_ptr<T>();
    T* l = L.mutable_data_ptr<T>();
    int32_t* failed = info.mutable_data_ptr<int32_t>();
    for (int64_t b = 0; b < N; ++b) failed[b] = cholesky_factor(m + b * nn, l + b * nn, n);
  });
  return {L, info};
}

// `torch.cholesky_solve(B, L)` for batches `(N, n, k)`, `(N, n, n)` of small systems, as the Gaussian nodes outside
// the recursions solve them (N = B·T): LAPACK's batched call costs about 0.7 µs per 8×8 system in per-matrix
// overhead, these loops a third of that, and a fifth at 2×2. Above the loop limit LAPACK does the n³ work faster.
static Tensor small_cholesky_solve(const Tensor& B_in, const Tensor& L_in) {
  const int64_t n = L_in.size(-1);
  if (!loops_pay(n) || B_in.dim() != 3 || L_in.dim() != 3 || B_in.size(0) != L_in.size(0))
    return at::cholesky_solve(B_in, L_in);
  Tensor L = L_in.contiguous(), X = B_in.clone(at::MemoryFormat::Contiguous);
  const int64_t k = X.size(-1);
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "small_cholesky_solve", [&] {
    const scalar_t* l = L.const_data_ptr<scalar_t>();
    scalar_t* x = X.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < X.size(0); ++b) cholesky_solve_in_place(l + b * n * n, x + b * n * k, n, k);
  });
  return X;
}

// `gaussian._GaussianKL`'s forward for batches of N small Gaussians: KL(N(μq, LqLqᵀ) ‖ N(μp, LpLpᵀ)) `(N)` from the
// means `(N, n)`, Σq `(N, n, n)` and both factors, with Pᵢ = Σp⁻¹ `(N, n, n)` and β = Pᵢ(μp − μq) `(N, n, 1)`,
// which its backward takes. Returns {KL, Pᵢ, β}.
static Tensors gaussian_kl(const Tensor& mean_q_in, const Tensor& cov_q_in, const Tensor& mean_p_in,
                           const Tensor& Lq_in, const Tensor& Lp_in) {
  const int64_t N = cov_q_in.size(0), n = cov_q_in.size(-1), nn = n * n;
  Tensor mean_q = mean_q_in.contiguous(), cov_q = cov_q_in.contiguous(), mean_p = mean_p_in.contiguous();
  Tensor Lq = Lq_in.contiguous(), Lp = Lp_in.contiguous();
  auto options = cov_q.options();
  Tensor kl = at::empty({N}, options), inverse_p = at::empty({N, n, n}, options), beta = at::empty({N, n, 1}, options);
  AT_DISPATCH_FLOATING_TYPES(cov_q.scalar_type(), "gaussian_kl", [&] {
    using T = scalar_t;
    std::vector<T> gap(n);
    const T *mean_qs = mean_q.const_data_ptr<T>(), *mean_ps = mean_p.const_data_ptr<T>();
    const T *cov_qs = cov_q.const_data_ptr<T>(), *Lqs = Lq.const_data_ptr<T>(), *Lps = Lp.const_data_ptr<T>();
    T *inverse_ps = inverse_p.mutable_data_ptr<T>(), *betas = beta.mutable_data_ptr<T>(), *kls = kl.mutable_data_ptr<T>();
    for (int64_t b = 0; b < N; ++b) {
      const T *mq = mean_qs + b * n, *mp = mean_ps + b * n, *Sq = cov_qs + b * nn, *Lqb = Lqs + b * nn;
      const T* Lpb = Lps + b * nn;
      T *Pi = inverse_ps + b * nn, *be = betas + b * n;
      inverse_from_factor(Lpb, Pi, n);
      for (int64_t i = 0; i < n; ++i) gap[i] = mp[i] - mq[i];
      product<false, false>(be, Pi, gap.data(), n, n, int64_t(1));
      T trace = 0, quadratic = 0, log_det_ratio = 0;
      for (int64_t i = 0; i < nn; ++i) trace += Pi[i] * Sq[i];
      for (int64_t i = 0; i < n; ++i) {
        quadratic += gap[i] * be[i];
        log_det_ratio += std::log(Lpb[i * n + i]) - std::log(Lqb[i * n + i]);
      }
      kls[b] = T(0.5) * (trace + quadratic - T(n)) + log_det_ratio;
    }
  });
  return {kl, inverse_p, beta};
}

// The backward of `gaussian._GaussianKL` for batches of N small Gaussians, all terms of one element at once:
// with Pᵢ = Σp⁻¹, Qᵢ = Σq⁻¹ (from its factor Lq), β = Pᵢ(μp − μq) and g the incoming gradient,
// ∂μp = g β, ∂Σq = g/2 (Pᵢ − Qᵢ), ∂Σp = g/2 (Pᵢ − Pᵢ Σq Pᵢ − ββᵀ). As ATen calls these are seven passes over
// (N, n, n) buffers and two batched products, about 1.2 ms of a push iteration. Returns {∂μp, ∂Σq, ∂Σp}.
static Tensors gaussian_kl_backward(const Tensor& cov_q_in, const Tensor& Lq_in, const Tensor& inverse_p_in,
                                    const Tensor& beta_in, const Tensor& grad_in) {
  const int64_t N = cov_q_in.size(0), n = cov_q_in.size(-1), nn = n * n;
  Tensor cov_q = cov_q_in.contiguous(), Lq = Lq_in.contiguous(), inverse_p = inverse_p_in.contiguous();
  Tensor beta = beta_in.contiguous(), grad = grad_in.contiguous();
  auto options = cov_q.options();
  Tensor grad_mean_p = at::empty({N, n}, options), grad_cov_q = at::empty({N, n, n}, options);
  Tensor grad_cov_p = at::empty({N, n, n}, options);
  AT_DISPATCH_FLOATING_TYPES(cov_q.scalar_type(), "gaussian_kl_backward", [&] {
    using T = scalar_t;
    std::vector<T> inverse_q(nn), PS(nn), PSP(nn);
    const T *inverse_ps = inverse_p.const_data_ptr<T>(), *betas = beta.const_data_ptr<T>();
    const T *grads = grad.const_data_ptr<T>(), *Lqs = Lq.const_data_ptr<T>(), *cov_qs = cov_q.const_data_ptr<T>();
    T *grad_mean_ps = grad_mean_p.mutable_data_ptr<T>(), *grad_cov_qs = grad_cov_q.mutable_data_ptr<T>();
    T* grad_cov_ps = grad_cov_p.mutable_data_ptr<T>();
    for (int64_t b = 0; b < N; ++b) {
      const T *Pi = inverse_ps + b * nn, *be = betas + b * n;
      const T g = grads[b], half = T(0.5) * g;
      inverse_from_factor(Lqs + b * nn, inverse_q.data(), n);
      product<false, false>(PS.data(), Pi, cov_qs + b * nn, n, n, n);
      product<false, false>(PSP.data(), PS.data(), Pi, n, n, n);
      T *gm = grad_mean_ps + b * n, *gq = grad_cov_qs + b * nn, *gp = grad_cov_ps + b * nn;
      for (int64_t i = 0; i < n; ++i) {
        gm[i] = g * be[i];
        for (int64_t j = 0; j < n; ++j) {
          const int64_t ij = i * n + j;
          gq[ij] = half * (Pi[ij] - inverse_q[ij]);
          gp[ij] = half * (Pi[ij] - PSP[ij] - be[i] * be[j]);
        }
      }
    }
  });
  return {grad_mean_p, grad_cov_q, grad_cov_p};
}

// `gaussian._GaussianLogDensity` for batches of N small Gaussians: log N(x; μ, LLᵀ) `(N)` from the gaps x − μ
// `(N, n)` and the factors L `(N, n, n)`, r = L⁻¹(x − μ) by forward substitution; as ATen calls a triangular solve
// (LAPACK once per 2×2 matrix at push size), a log of a strided diagonal and three reductions.
static Tensor gaussian_log_density(const Tensor& gap_in, const Tensor& L_in) {
  const int64_t N = gap_in.size(0), n = gap_in.size(-1);
  Tensor gap = gap_in.contiguous(), L = L_in.contiguous(), out = at::empty({N}, gap.options());
  AT_DISPATCH_FLOATING_TYPES(gap.scalar_type(), "gaussian_log_density", [&] {
    using T = scalar_t;
    const T constant = T(0.5) * T(n) * std::log(T(2) * T(M_PI));
    std::vector<T> r(n);
    const T *gaps = gap.const_data_ptr<T>(), *Ls = L.const_data_ptr<T>();
    T* outs = out.mutable_data_ptr<T>();
    for (int64_t b = 0; b < N; ++b) {
      const T *x = gaps + b * n, *Lb = Ls + b * n * n;
      std::copy(x, x + n, r.begin());
      forward_substitution(Lb, r.data(), n, int64_t(1));
      T squares = 0, half_log_det = 0;
      for (int64_t i = 0; i < n; ++i) {
        squares += r[i] * r[i];
        half_log_det += std::log(Lb[i * n + i]);
      }
      outs[b] = -constant - T(0.5) * squares - half_log_det;
    }
  });
  return out;
}

// Its backward: with α = (LLᵀ)⁻¹(x − μ) and g the incoming gradient, ∂μ = g α and ∂Σ = g/2 (ααᵀ − (LLᵀ)⁻¹).
// Returns {∂μ `(N, n)`, ∂Σ `(N, n, n)`}.
static Tensors gaussian_log_density_backward(const Tensor& gap_in, const Tensor& L_in, const Tensor& grad_in) {
  const int64_t N = gap_in.size(0), n = gap_in.size(-1), nn = n * n;
  Tensor gap = gap_in.contiguous(), L = L_in.contiguous(), grad = grad_in.contiguous();
  Tensor grad_mean = at::empty({N, n}, gap.options()), grad_cov = at::empty({N, n, n}, gap.options());
  AT_DISPATCH_FLOATING_TYPES(gap.scalar_type(), "gaussian_log_density_backward", [&] {
    using T = scalar_t;
    std::vector<T> alpha(n), inverse(nn);
    const T *gaps = gap.const_data_ptr<T>(), *Ls = L.const_data_ptr<T>(), *grads = grad.const_data_ptr<T>();
    T *grad_means = grad_mean.mutable_data_ptr<T>(), *grad_covs = grad_cov.mutable_data_ptr<T>();
    for (int64_t b = 0; b < N; ++b) {
      const T *x = gaps + b * n, *Lb = Ls + b * nn;
      const T g = grads[b];
      std::copy(x, x + n, alpha.begin());
      cholesky_solve_in_place(Lb, alpha.data(), n, int64_t(1));
      inverse_from_factor(Lb, inverse.data(), n);
      T *gm = grad_means + b * n, *gc = grad_covs + b * nn;
      for (int64_t i = 0; i < n; ++i) {
        gm[i] = g * alpha[i];
        for (int64_t j = 0; j < n; ++j) gc[i * n + j] = T(0.5) * g * (alpha[i] * alpha[j] - inverse[i * n + j]);
      }
    }
  });
  return {grad_mean, grad_cov};
}

// The update of one batch element. `work` holds CP (p×n), L (p×p), X (p×(n+1)), MP and the Joseph sum
// (n×n each) and RK (p×n).
template <typename T>
static int32_t kalman_element(int64_t n, int64_t p, const T* mean, const T* P, const T* y_pred, const T* C,
                              const T* R, const T* y, T* work, T* new_mean, T* new_cov, T* S, T* Kt, T* s, T* gain,
                              T* M) {
  const int64_t w = n + 1;
  T *CP = work, *L = CP + p * n, *X = L + p * p, *MP = X + p * w, *joseph = MP + n * n, *RK = joseph + n * n;
  product<false, false>(CP, C, P, p, n, n);
  std::copy(R, R + p * p, S);
  product<false, true, true>(S, CP, C, p, n, p);
  const int32_t info = cholesky_factor(S, L, p);
  for (int64_t i = 0; i < p; ++i) {  // X = S⁻¹ [CP | y − ŷ]
    std::copy(CP + i * n, CP + (i + 1) * n, X + i * w);
    X[i * w + n] = y[i] - y_pred[i];
  }
  cholesky_solve_in_place(L, X, p, w);
  for (int64_t i = 0; i < p; ++i) {
    std::copy(X + i * w, X + i * w + n, Kt + i * n);
    s[i] = X[i * w + n];
  }
  product<true, false>(gain, s, CP, 1, p, n);
  for (int64_t j = 0; j < n; ++j) new_mean[j] = mean[j] + gain[j];
  for (int64_t i = 0; i < n * n; ++i) M[i] = i % (n + 1) == 0 ? T(1) : T(0);
  product<true, false, true>(M, Kt, C, n, p, n, T(-1));  // M = I − Kᵀᵀ C
  product<false, false>(MP, M, P, n, n, n);
  product<false, false>(RK, R, Kt, p, p, n);
  product<false, true>(joseph, MP, M, n, n, n);  // Σ' = sym(M Σ Mᵀ + Kᵀᵀ R Kᵀ), the Joseph form
  product<true, false, true>(joseph, Kt, RK, n, p, n);
  symmetric_part(new_cov, joseph, n);
  return info;
}

// The update of a batch into `new_mean` (B, n), `new_cov` (B, n, n), `S` (B, p, p) and `info` (B), each contiguous
// within an element at any batch stride (a step's rows of the filter's outputs).
static void kalman_update(const Tensor& mean_in, const Tensor& cov_in, const Tensor& y_pred_in, const Tensor& C_in,
                          const Tensor& R_in, const Tensor& y_in, KalmanSaved& k, const Tensor& new_mean,
                          const Tensor& new_cov, const Tensor& S, const Tensor& info) {
  const int64_t B = cov_in.size(0), n = cov_in.size(-1), p = C_in.size(1);
  if (!loops_pay(n)) {
    Tensor R = R_in.expand({B, p, p}), CP = at::bmm(C_in, cov_in);
    S.copy_(at::baddbmm(R, CP, mT(C_in)));
    auto [L, factor_info] = at::linalg_cholesky_ex(S);
    info.copy_(factor_info);
    Tensor solution = at::cholesky_solve(at::cat({CP, (y_in - y_pred_in).unsqueeze(-1)}, -1), L);
    k.Kt = solution.slice(-1, 0, n).contiguous(), k.s = solution.slice(-1, n).contiguous();
    k.gain_step = at::bmm(mT(k.s), CP);
    k.M = at::baddbmm(at::eye(n, cov_in.options()), mT(k.Kt), C_in, 1, -1);
    new_cov.copy_(symmetrize(at::baddbmm(at::bmm(at::bmm(k.M, cov_in), mT(k.M)), mT(k.Kt), at::bmm(R, k.Kt))));
    new_mean.copy_(mean_in + k.gain_step.squeeze(1));
    return;
  }
  Tensor mean = inner_contiguous(mean_in), cov = inner_contiguous(cov_in), y_pred = inner_contiguous(y_pred_in);
  Tensor C = inner_contiguous(C_in), R = inner_contiguous(R_in.expand({B, p, p})), y = inner_contiguous(y_in);
  auto options = cov.options();
  k.Kt = at::empty({B, p, n}, options), k.s = at::empty({B, p, 1}, options);
  k.gain_step = at::empty({B, 1, n}, options), k.M = at::empty({B, n, n}, options);
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "kalman_update", [&] {
    using T = scalar_t;
    std::vector<T> work(2 * p * n + p * p + p * (n + 1) + 2 * n * n);
    const Elements<T> means(mean), covs(cov), y_preds(y_pred), Cs(C), Rs(R), ys(y);
    T *new_means = new_mean.data_ptr<T>(), *new_covs = new_cov.data_ptr<T>(), *Ss = S.data_ptr<T>();
    T *Kts = k.Kt.data_ptr<T>(), *ss = k.s.data_ptr<T>(), *gains = k.gain_step.data_ptr<T>(), *Ms = k.M.data_ptr<T>();
    int32_t* infos = info.data_ptr<int32_t>();
    const int64_t mean_stride = new_mean.stride(0), cov_stride = new_cov.stride(0), S_stride = S.stride(0);
    for (int64_t b = 0; b < B; ++b)
      infos[b * info.stride(0)] = kalman_element<T>(
          n, p, means[b], covs[b], y_preds[b], Cs[b], Rs[b], ys[b], work.data(), new_means + b * mean_stride,
          new_covs + b * cov_stride, Ss + b * S_stride, Kts + b * p * n, ss + b * p, gains + b * n, Ms + b * n * n);
  });
}

struct KalmanGrads {
  Tensor cov, y_pred, C, R, y;
};

// The backward of one batch element (`_kalman_update_backward`); `GS` is null when S has no gradient. `work` holds
// G, GM (n×n each), GK (n×p), K g (p), Mᵀg, sᵀC, Σ'g (n each), sym(GS) (p×p) and sym(GS) C (p×n).
template <typename T>
static void kalman_backward_element(int64_t n, int64_t p, const T* P, const T* C, const T* N, const T* Kt,
                                    const T* s, const T* gain, const T* M, const T* g, const T* Gc, const T* GS,
                                    T* work, T* grad_cov, T* grad_y_pred, T* grad_C, T* grad_R, T* grad_y) {
  T *G = work, *GM = G + n * n, *GK = GM + n * n, *Ktg = GK + n * p, *Mtg = Ktg + p, *sC = Mtg + n, *Ng = sC + n;
  T *GSs = Ng + n, *GSC = GSs + p * p;
  symmetric_part(G, Gc, n);
  product<false, false>(Ktg, Kt, g, p, n, 1);
  for (int64_t i = 0; i < p; ++i) grad_y[i] = Ktg[i], grad_y_pred[i] = -Ktg[i];
  std::copy(g, g + n, Mtg);
  product<true, false, true>(Mtg, C, Ktg, n, p, 1, T(-1));  // Mᵀ g = g − Cᵀ K g
  product<true, false>(sC, s, C, 1, p, n);
  product<false, false>(GM, G, M, n, n, n);
  product<true, false>(grad_cov, M, GM, n, n, n);  // ∂Σ = Mᵀ G M + (Mᵀg)(sᵀC)
  product<false, false, true>(grad_cov, Mtg, sC, n, 1, n);
  product<false, true>(GK, G, Kt, n, n, p);
  product<false, false>(grad_R, Kt, GK, p, n, p);  // ∂R = Kᵀ G Kᵀᵀ − (K g) sᵀ
  product<false, true, true>(grad_R, Ktg, s, p, 1, p, T(-1));
  product<false, false>(Ng, N, g, n, n, 1);
  product<false, true>(grad_C, s, Ng, p, 1, n);  // ∂C = s (Σ'g)ᵀ − (K g) gainᵀ − 2 (G Kᵀᵀ)ᵀ Σ'
  product<false, true, true>(grad_C, Ktg, gain, p, 1, n, T(-1));
  product<true, false, true>(grad_C, GK, N, p, n, n, T(-2));
  if (GS == nullptr) return;
  symmetric_part(GSs, GS, p);
  product<false, false>(GSC, GSs, C, p, p, n);
  product<true, false, true>(grad_cov, C, GSC, n, p, n);
  for (int64_t i = 0; i < p * p; ++i) grad_R[i] += GSs[i];
  product<false, false, true>(grad_C, GSC, P, p, n, n, T(2));
}

static KalmanGrads kalman_update_backward(const Tensor& cov_in, const Tensor& C_in, const Tensor& new_cov_in,
                                          const KalmanSaved& k, const Tensor& grad_mean_in,
                                          const Tensor& grad_cov_in, const Tensor& grad_S_in) {
  const int64_t B = cov_in.size(0), n = cov_in.size(-1), p = C_in.size(1);
  if (!loops_pay(n)) {
    Tensor G = symmetrize(grad_cov_in), g = grad_mean_in.unsqueeze(-1), Ct = mT(C_in);
    Tensor Ktg = at::bmm(k.Kt, g);
    Tensor Mtg = at::baddbmm(g, Ct, Ktg, 1, -1);
    Tensor grad_cov = at::baddbmm(at::bmm(mT(k.M), at::bmm(G, k.M)), Mtg, at::bmm(mT(k.s), C_in));
    Tensor GK = at::bmm(G, mT(k.Kt));
    Tensor grad_R = at::baddbmm(at::bmm(k.Kt, GK), Ktg, mT(k.s), 1, -1);
    Tensor grad_C = at::baddbmm(at::bmm(k.s, mT(at::bmm(new_cov_in, g))), Ktg, k.gain_step, 1, -1);
    grad_C = at::baddbmm(grad_C, mT(GK), new_cov_in, 1, -2);
    if (grad_S_in.defined()) {
      Tensor G_S = symmetrize(grad_S_in), G_S_C = at::bmm(G_S, C_in);
      grad_cov = at::baddbmm(grad_cov, Ct, G_S_C);
      grad_R = grad_R + G_S;
      grad_C = at::baddbmm(grad_C, G_S_C, cov_in, 1, 2);
    }
    Tensor grad_y = Ktg.squeeze(-1);
    return {grad_cov, -grad_y, grad_C, grad_R, grad_y};
  }
  Tensor cov = inner_contiguous(cov_in), C = inner_contiguous(C_in), new_cov = inner_contiguous(new_cov_in);
  Tensor g = inner_contiguous(grad_mean_in), Gc = inner_contiguous(grad_cov_in);
  Tensor GS = grad_S_in.defined() ? inner_contiguous(grad_S_in) : Tensor();
  auto options = cov.options();
  KalmanGrads out{at::empty({B, n, n}, options), at::empty({B, p}, options), at::empty({B, p, n}, options),
                  at::empty({B, p, p}, options), at::empty({B, p}, options)};
  AT_DISPATCH_FLOATING_TYPES(cov.scalar_type(), "kalman_update_backward", [&] {
    using T = scalar_t;
    std::vector<T> work(2 * n * n + 2 * n * p + p + 3 * n + p * p);
    const Elements<T> covs(cov), Cs(C), new_covs(new_cov), Kts(k.Kt), ss(k.s), gains(k.gain_step), Ms(k.M), gs(g);
    const Elements<T> Gcs(Gc);
    const T* GSs = GS.defined() ? GS.const_data_ptr<T>() : nullptr;
    const int64_t GS_stride = GS.defined() ? GS.stride(0) : 0;
    T *grad_covs = out.cov.data_ptr<T>(), *grad_y_preds = out.y_pred.data_ptr<T>(), *grad_Cs = out.C.data_ptr<T>();
    T *grad_Rs = out.R.data_ptr<T>(), *grad_ys = out.y.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b)
      kalman_backward_element<T>(n, p, covs[b], Cs[b], new_covs[b], Kts[b], ss[b], gains[b], Ms[b], gs[b], Gcs[b],
                                 GSs ? GSs + b * GS_stride : nullptr, work.data(), grad_covs + b * n * n,
                                 grad_y_preds + b * p, grad_Cs + b * p * n, grad_Rs + b * p * p, grad_ys + b * p);
  });
  return out;
}
