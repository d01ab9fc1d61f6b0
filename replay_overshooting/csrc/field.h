// The continuous-time belief field in one node (02_continuous, 'The field in one node'): for a flat state
// Y = [μ, P, Φ] (B, n + 2n²), the derivatives [f(μ, u), A P + P Aᵀ + Q, A Φ] with A = ∂f/∂μ, and their backward.
#pragma once
#include "mlp.h"

struct BeliefFieldTape {
  MLPTape mlp;
  Tensor Y, A;  // the state the field was evaluated at, contiguous; the Jacobian (B, n, n)
  int64_t n = 0;
  bool has_controls = false;
};

// C_b (n×n) = A_b X_b + (symmetric ? (A_b X_b)ᵀ : 0) + add_b, for every batch element; all row-major n×n, X and C
// with row strides x_stride and c_stride between elements.
template <typename T>
static void field_products(const T* A, const T* X, const T* add, T* C, int64_t B, int64_t n, bool symmetric,
                           int64_t x_stride, int64_t c_stride) {
  const int64_t nn = n * n;
  for (int64_t b = 0; b < B; ++b) {
    const T *a = A + b * nn, *x = X + b * x_stride, *q = add ? add + b * nn : nullptr;
    T* c = C + b * c_stride;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T sum = q ? q[i * n + j] : T(0);
        for (int64_t k = 0; k < n; ++k) sum += a[i * n + k] * x[k * n + j];
        c[i * n + j] = sum;
      }
    if (symmetric)  // C ← C + (A X)ᵀ, read back from C less `add`
      for (int64_t i = 0; i < n; ++i) {
        c[i * n + i] += c[i * n + i] - (q ? q[i * n + i] : T(0));
        for (int64_t j = 0; j < i; ++j) {
          const T upper = c[i * n + j] - (q ? q[i * n + j] : T(0)), lower = c[j * n + i] - (q ? q[j * n + i] : T(0));
          c[i * n + j] += lower, c[j * n + i] += upper;
        }
      }
  }
}

static std::tuple<Tensor, std::shared_ptr<BeliefFieldTape>> belief_field_forward(
    const Tensor& Y_in, const std::optional<Tensor>& u, const Tensor& Q_in, const Tensors& params, int64_t activation,
    double beta, int64_t n) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto tape = std::make_shared<BeliefFieldTape>();
  const int64_t B = Y_in.size(0), nn = n * n, N = n + 2 * nn;
  TORCH_CHECK(Y_in.dim() == 2 && Y_in.size(1) == N, "belief field: the state must be (B, n + 2n²)");
  tape->n = n, tape->has_controls = u.has_value();
  tape->Y = Y_in.contiguous();
  Tensor Q = Q_in.expand({B, n, n}).contiguous(), mean = tape->Y.slice(1, 0, n);
  Tensor x = u.has_value() ? at::cat({mean, *u}, -1) : mean.contiguous();
  tape->mlp.layers = make_layers(params, activation, beta, n);
  auto [velocity, A] = mlp_forward(x, tape->mlp.layers, tape->mlp.saved);
  tape->A = A;
  Tensor out = at::empty({B, N}, Y_in.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "belief_field", [&] {
    const scalar_t *Y = tape->Y.const_data_ptr<scalar_t>(), *a = A.const_data_ptr<scalar_t>();
    const scalar_t* v = velocity.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) std::copy(v + b * n, v + (b + 1) * n, o + b * N);
    // dP = A P + (A P)ᵀ + Q, dΦ = A Φ
    field_products<scalar_t>(a, Y + n, Q.const_data_ptr<scalar_t>(), o + n, B, n, true, N, N);
    field_products<scalar_t>(a, Y + n + nn, nullptr, o + n + nn, B, n, false, N, N);
  });
  return {out, tape};
}

// The gradients of the field's inputs, by name: `Y`, `u`, `Q` and the network's `weights`, from ∂ℓ/∂(dY).
// With S = G_P + G_Pᵀ:   ∂A = S Pᵀ + G_Φ Φᵀ,   ∂P = Aᵀ S,   ∂Φ = Aᵀ G_Φ,   ∂Q = G_P,
// then the network's backward from (∂f = G_μ, ∂A) gives ∂μ and ∂u.
static Named belief_field_backward(const BeliefFieldTape& tape, const Tensor& grad_in) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t B = tape.Y.size(0), n = tape.n, nn = n * n, N = n + 2 * nn;
  Tensor grad = grad_in.contiguous();
  Tensor grad_A = at::empty({B, n, n}, grad.options()), grad_Y = at::empty({B, N}, grad.options());
  Tensor grad_Q = grad.slice(1, n, n + nn).reshape({B, n, n});
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "belief_field_backward", [&] {
    const scalar_t *Y = tape.Y.const_data_ptr<scalar_t>(), *A = tape.A.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t *gA = grad_A.data_ptr<scalar_t>(), *gY = grad_Y.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t *P = Y + b * N + n, *Phi = P + nn, *a = A + b * nn;
      const scalar_t *GP = g + b * N + n, *GPhi = GP + nn;
      scalar_t *ga = gA + b * nn, *gP = gY + b * N + n, *gPhi = gP + nn;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          scalar_t dA = 0, dP = 0, dPhi = 0;
          for (int64_t k = 0; k < n; ++k) {
            dA += (GP[i * n + k] + GP[k * n + i]) * P[j * n + k] + GPhi[i * n + k] * Phi[j * n + k];
            dP += a[k * n + i] * (GP[k * n + j] + GP[j * n + k]);
            dPhi += a[k * n + i] * GPhi[k * n + j];
          }
          ga[i * n + j] = dA, gP[i * n + j] = dP, gPhi[i * n + j] = dPhi;
        }
    }
  });
  WeightGradients weight_grads{&tape.mlp.layers};
  Tensor grad_velocity = grad.slice(1, 0, n);
  Tensor grad_x = mlp_backward_to_input(tape.mlp.saved, tape.mlp.layers, grad_velocity, grad_A, weight_grads);
  grad_Y.slice(1, 0, n).copy_(grad_x.slice(1, 0, n));
  Named out;
  out["Y"] = grad_Y;
  out["u"] = tape.has_controls ? grad_x.slice(1, n) : Tensor();
  out["Q"] = grad_Q;
  out["weights"] = weight_grads.result();
  return out;
}
