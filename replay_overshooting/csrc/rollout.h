// The replay rollout, forward and backward (03a, 'The replay rollout').
#pragma once
#include "steps.h"

struct RolloutTape {
  Layers dynamics;
  std::vector<MLPSaved> saved;
  bool has_controls;
};

// The beliefs `means`, `covs` and the Jacobians `A` of the open-loop prediction, by name.
static std::pair<Named, std::shared_ptr<RolloutTape>> rollout_forward(
    Tensor mean, Tensor cov, const std::optional<Tensor>& u, const Tensor& Q, int64_t steps, const Tensors& params,
    int64_t activation, double beta) {
  NativeScope scope;
  auto tape = std::make_shared<RolloutTape>();
  const int64_t B = mean.size(0), n = mean.size(-1);
  tape->dynamics = make_layers(params, activation, beta, n);
  tape->has_controls = u.has_value();
  Tensor means = at::empty({B, steps, n}, mean.options()), covs = at::empty({B, steps, n, n}, cov.options());
  Tensor A = at::empty({B, std::max<int64_t>(steps - 1, 0), n, n}, cov.options());
  step_of(means, 0).copy_(mean), step_of(covs, 0).copy_(cov);
  for (int64_t k = 0; k + 1 < steps; ++k) {
    MLPSaved saved;
    time_update(step_of(means, k), step_of(covs, k), u.has_value() ? step_of(*u, k) : Tensor(), Q,
                tape->dynamics, saved, step_of(means, k + 1), step_of(covs, k + 1), step_of(A, k));
    tape->saved.push_back(std::move(saved));
  }
  Named out;
  out["means"] = means;
  out["covs"] = covs;
  out["A"] = A;
  return {out, tape};
}

// The gradients of the rollout's inputs, by name: `mean`, `cov`, `u`, `dynamics_cov` and the dynamics network's
// `weights` in `MLP.parameter_list` order.
static Named rollout_backward(RolloutTape& tape, const Tensor& covs, const Tensor& A, const Tensor& grad_means,
                                const Tensor& grad_covs, const Tensor& grad_A) {
  NativeScope scope;
  const int64_t steps = grad_means.size(1);
  Tensor carry_mean = step_of(grad_means, steps - 1), carry_cov = step_of(grad_covs, steps - 1);
  Tensors grad_u, grad_Q;
  WeightGradients weight_grads{&tape.dynamics};
  for (int64_t k = steps - 2; k >= 0; --k) {
    auto back = time_update_backward(tape.dynamics, tape.saved[k], step_of(covs, k), step_of(A, k), carry_mean,
                                     carry_cov, step_of(grad_A, k), tape.has_controls, weight_grads);
    carry_mean = sum_of(step_of(grad_means, k), back.mean), carry_cov = sum_of(step_of(grad_covs, k), back.cov);
    if (tape.has_controls) grad_u.push_back(back.u);
    grad_Q.push_back(back.Q);
  }
  std::reverse(grad_u.begin(), grad_u.end());
  Named out;
  out["mean"] = carry_mean;
  out["cov"] = carry_cov;
  out["u"] = grad_u.empty() ? Tensor() : at::stack(grad_u, 1);
  out["dynamics_cov"] = grad_Q.empty() ? Tensor() : at::stack(grad_Q).sum(0);
  out["weights"] = weight_grads.result();
  return out;
}
