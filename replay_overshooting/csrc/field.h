// The continuous-time belief field in one node (03a, 'The continuous-time belief field'): for a flat state
// Y = [μ, P, Φ] (B, n + 2n²), the derivatives [f(μ, u), A P + (A P)ᵀ + Q, A Φ] with A = ∂f/∂μ, and their backward.
// The n×n products are `steps.h`'s `product`.
#pragma once
#include "steps.h"

struct BeliefFieldTape {
  MLPTape mlp;
  Tensor Y, A;  // the state the field was evaluated at, contiguous; the Jacobian (B, n, n)
  int64_t n = 0;
  bool has_controls = false;
};

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
    const scalar_t *Y = tape->Y.const_data_ptr<scalar_t>(), *A_all = A.const_data_ptr<scalar_t>();
    const scalar_t *v = velocity.const_data_ptr<scalar_t>(), *Q_all = Q.const_data_ptr<scalar_t>();
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
    std::vector<scalar_t> S(nn);
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t *P = Y + b * N + n, *Phi = P + nn, *a = A + b * nn;
      const scalar_t *GP = g + b * N + n, *GPhi = GP + nn;
      scalar_t *ga = gA + b * nn, *gP = gY + b * N + n, *gPhi = gP + nn;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) S[i * n + j] = GP[i * n + j] + GP[j * n + i];
      product<false, true>(ga, S.data(), P, n, n, n);       // ∂A = S Pᵀ
      product<false, true, true>(ga, GPhi, Phi, n, n, n);  //    + G_Φ Φᵀ
      product<true, false>(gP, a, S.data(), n, n, n);      // ∂P = Aᵀ S
      product<true, false>(gPhi, a, GPhi, n, n, n);        // ∂Φ = Aᵀ G_Φ
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
