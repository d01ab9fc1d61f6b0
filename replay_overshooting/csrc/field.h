// The continuous-time belief field (03a, 'The continuous-time belief field'): for a flat state
// Y = [μ, P, Φ] (B, n + 2n²), the derivatives [f(μ, u), A P + (A P)ᵀ + Q, A Φ] with A = ∂f/∂μ, and their adjoint.
// One evaluation of the field is a stage of the Dormand–Prince solve in `flow.h`. The n×n products are `steps.h`'s
// `product`.
#pragma once
#include "steps.h"

// What one solve shares between its evaluations: the network's folded weights, the controls and Q.
struct BeliefFieldInputs {
  Layers layers;
  Tensor u, Q;  // controls (B, m) or undefined; Q (B, n, n), contiguous
  int64_t n = 0;
};

// What the adjoint of one evaluation needs: the state it was evaluated at, the network's tape and the Jacobian.
struct BeliefFieldStage {
  MLPSaved mlp;
  Tensor Y, A;  // (B, n + 2n²), contiguous; (B, n, n)
};

// Ẏ at `Y_in` (B, n + 2n²), keeping what its adjoint needs in `stage`.
static Tensor belief_field(const Tensor& Y_in, const BeliefFieldInputs& in, BeliefFieldStage& stage) {
  const int64_t B = Y_in.size(0), n = in.n, nn = n * n, N = n + 2 * nn;
  stage.Y = Y_in.contiguous();
  Tensor mean = stage.Y.slice(1, 0, n);
  Tensor x = in.u.defined() ? at::cat({mean, in.u}, -1) : mean.contiguous();
  auto [velocity, A] = mlp_forward(x, in.layers, stage.mlp);
  stage.A = A;
  Tensor out = at::empty({B, N}, Y_in.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "belief_field", [&] {
    const scalar_t *Y = stage.Y.const_data_ptr<scalar_t>(), *A_all = A.const_data_ptr<scalar_t>();
    const scalar_t *v = velocity.const_data_ptr<scalar_t>(), *Q_all = in.Q.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    std::vector<scalar_t> AP(nn);
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t *a = A_all + b * nn, *P = Y + b * N + n, *q = Q_all + b * nn;
      scalar_t *row = o + b * N, *dP = row + n;
      std::copy(v + b * n, v + (b + 1) * n, row);
      product<false, false>(AP.data(), a, P, n, n, n);  // dP = A P + (A P)ᵀ + Q
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) dP[i * n + j] = AP[i * n + j] + AP[j * n + i] + q[i * n + j];
      product<false, false>(dP + nn, a, P + nn, n, n, n);  // dΦ = A Φ
    }
  });
  return out;
}

// The adjoint of one evaluation: ∂ℓ/∂Y (B, n + 2n²) from G = ∂ℓ/∂Ẏ, adding the gradients of the controls
// (`grad_u`, when defined), of Q (`grad_Q`) and of the network's weights (`weights`) to their running sums.
// With S = G_P + G_Pᵀ:   ∂A = S Pᵀ + G_Φ Φᵀ,   ∂P = Aᵀ S,   ∂Φ = Aᵀ G_Φ,   ∂Q = G_P,
// then the network's backward from (∂f = G_μ, ∂A) gives ∂μ and ∂u.
static Tensor belief_field_adjoint(const BeliefFieldStage& stage, const BeliefFieldInputs& in, const Tensor& G_in,
                                   WeightGradients& weights, Tensor& grad_u, Tensor& grad_Q) {
  const int64_t B = stage.Y.size(0), n = in.n, nn = n * n, N = n + 2 * nn;
  Tensor G = G_in.contiguous();
  Tensor grad_A = at::empty({B, n, n}, G.options()), grad_Y = at::empty({B, N}, G.options());
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "belief_field_adjoint", [&] {
    const scalar_t *Y = stage.Y.const_data_ptr<scalar_t>(), *A = stage.A.const_data_ptr<scalar_t>();
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    scalar_t *gA = grad_A.data_ptr<scalar_t>(), *gY = grad_Y.data_ptr<scalar_t>(), *gQ = grad_Q.data_ptr<scalar_t>();
    std::vector<scalar_t> S(nn);
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t *P = Y + b * N + n, *Phi = P + nn, *a = A + b * nn;
      const scalar_t *GP = g + b * N + n, *GPhi = GP + nn;
      scalar_t *ga = gA + b * nn, *gP = gY + b * N + n, *gPhi = gP + nn, *gq = gQ + b * nn;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) S[i * n + j] = GP[i * n + j] + GP[j * n + i], gq[i * n + j] += GP[i * n + j];
      product<false, true>(ga, S.data(), P, n, n, n);       // ∂A = S Pᵀ
      product<false, true, true>(ga, GPhi, Phi, n, n, n);  //    + G_Φ Φᵀ
      product<true, false>(gP, a, S.data(), n, n, n);      // ∂P = Aᵀ S
      product<true, false>(gPhi, a, GPhi, n, n, n);        // ∂Φ = Aᵀ G_Φ
    }
  });
  Tensor grad_x = mlp_backward_to_input(stage.mlp, in.layers, G.slice(1, 0, n), grad_A, weights);
  grad_Y.slice(1, 0, n).copy_(grad_x.slice(1, 0, n));
  if (grad_u.defined()) grad_u.add_(grad_x.slice(1, n));
  return grad_Y;
}
