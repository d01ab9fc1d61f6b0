// The filter recursion, forward and backward (03a, 'The filter').
#pragma once
#include "steps.h"

struct FilterTape {
  Layers dynamics, observation;
  std::vector<MLPSaved> observation_saved, dynamics_saved;
  std::vector<KalmanSaved> update_saved;
  Tensors updated_covs;  // Σ' of the update, before a mask keeps the prediction
  Tensor mask;
  bool has_controls;
};

// The per-step quantities stacked over time, by the names of `ekf.FILTER_FIELDS`.
static const char* const kFilterFields[] = {"pm", "pc", "fm", "fc", "ym", "S", "C", "A", "info"};

static std::pair<Named, std::shared_ptr<FilterTape>> filter_forward(
    const Tensor& y, const std::optional<Tensor>& u, const std::optional<Tensor>& mask, Tensor mean, Tensor cov,
    const Tensor& Q, const Tensor& R, const Tensors& dynamics_params, int64_t dynamics_activation,
    double dynamics_beta, const Tensors& observation_params, int64_t observation_activation,
    double observation_beta) {
  NativeScope scope;
  auto tape = std::make_shared<FilterTape>();
  const int64_t B = y.size(0), T = y.size(1), n = mean.size(-1);
  tape->dynamics = make_layers(dynamics_params, dynamics_activation, dynamics_beta, n);
  tape->observation = make_layers(observation_params, observation_activation, observation_beta, n);
  tape->has_controls = u.has_value();
  if (mask.has_value()) tape->mask = *mask;
  // The outputs, filled step by step: row t of pm, pc holds the prior of step t (the initial belief, then each
  // time update), of fm, fc its posterior; A has the T − 1 time updates' Jacobians.
  const int64_t p = tape->observation.widths.back();
  auto options = y.options();
  Tensor pm = at::empty({B, T, n}, options), pc = at::empty({B, T, n, n}, options);
  Tensor fm = at::empty({B, T, n}, options), fc = at::empty({B, T, n, n}, options);
  Tensor ym = at::empty({B, T, p}, options), S = at::empty({B, T, p, p}, options);
  Tensor C = at::empty({B, T, p, n}, options), A = at::empty({B, T - 1, n, n}, options);
  Tensor info = at::empty({B, T}, options.dtype(at::kInt));
  step_of(pm, 0).copy_(mean), step_of(pc, 0).copy_(cov);
  for (int64_t t = 0; t < T; ++t) {
    Tensor prior_mean = step_of(pm, t), prior_cov = step_of(pc, t), y_pred = step_of(ym, t), C_t = step_of(C, t);
    Tensor new_mean = step_of(fm, t), new_cov = step_of(fc, t);
    MLPSaved observation_saved;
    mlp_forward_into(prior_mean, tape->observation, observation_saved, Tensor(), Tensor(), y_pred, C_t);
    KalmanSaved update_saved;
    kalman_update(prior_mean, prior_cov, y_pred, C_t, R, step_of(y, t), update_saved, new_mean, new_cov,
                  step_of(S, t), step_of(info, t));
    if (mask.has_value()) {  // a missing step keeps its prior
      tape->updated_covs.push_back(new_cov.clone());
      Tensor seen = step_of(*mask, t);
      new_mean.copy_(at::where(seen.unsqueeze(1), new_mean, prior_mean));
      new_cov.copy_(at::where(seen.view({B, 1, 1}), new_cov, prior_cov));
    } else {
      tape->updated_covs.push_back(new_cov);
    }
    tape->observation_saved.push_back(std::move(observation_saved));
    tape->update_saved.push_back(std::move(update_saved));
    if (t < T - 1) {
      MLPSaved dynamics_saved;
      Tensor u_t = u.has_value() ? step_of(*u, t) : Tensor();
      time_update(new_mean, new_cov, u_t, Q, tape->dynamics, dynamics_saved, step_of(pm, t + 1),
                  step_of(pc, t + 1), step_of(A, t));
      tape->dynamics_saved.push_back(std::move(dynamics_saved));
    }
  }
  Named out;
  const Tensor* fields[] = {&pm, &pc, &fm, &fc, &ym, &S, &C, &A, &info};
  for (size_t field = 0; field < std::size(fields); ++field) out[kFilterFields[field]] = *fields[field];
  return {out, tape};
}

// The gradients of the filter's inputs, by name: `y`, `u`, `initial_mean`, `initial_cov`, `dynamics_cov`,
// `obs_cov`, and the networks' `dynamics_weights` and `observation_weights` in `MLP.parameter_list` order.
static Named filter_backward(FilterTape& tape, const Tensor& pc, const Tensor& fc, const Tensor& C,
                               const Tensor& A, const Tensor& grad_pm, const Tensor& grad_pc, const Tensor& grad_fm,
                               const Tensor& grad_fc, const Tensor& grad_A, const std::optional<Tensor>& grad_ym,
                               const std::optional<Tensor>& grad_S, const std::optional<Tensor>& grad_C,
                               bool needs_grad_y) {
  NativeScope scope;
  const int64_t T = grad_pm.size(1);
  Tensor carry_mean, carry_cov;
  Tensors grad_y(T), grad_u, grad_Q, grad_R;
  WeightGradients dynamics_grads{&tape.dynamics}, observation_grads{&tape.observation};
  for (int64_t t = T - 1; t >= 0; --t) {
    Tensor to_mean = step_of(grad_fm, t), to_cov = step_of(grad_fc, t);
    if (t < T - 1) {
      auto back = time_update_backward(tape.dynamics, tape.dynamics_saved[t], step_of(fc, t), step_of(A, t),
                                       carry_mean, carry_cov, step_of(grad_A, t), tape.has_controls,
                                       dynamics_grads);
      to_mean = sum_of(to_mean, back.mean), to_cov = sum_of(to_cov, back.cov);
      if (tape.has_controls) grad_u.push_back(back.u);
      grad_Q.push_back(back.Q);
    }
    Tensor skip_mean, skip_cov;
    if (tape.mask.defined()) {
      Tensor seen = step_of(tape.mask, t), seen_mean = seen.unsqueeze(1), seen_cov = seen.view({-1, 1, 1});
      skip_mean = at::where(seen_mean, 0.0, to_mean), to_mean = at::where(seen_mean, to_mean, 0.0);
      skip_cov = at::where(seen_cov, 0.0, to_cov), to_cov = at::where(seen_cov, to_cov, 0.0);
    }
    auto grads = kalman_update_backward(step_of(pc, t), step_of(C, t), tape.updated_covs[t],
                                        tape.update_saved[t], to_mean, to_cov,
                                        grad_S.has_value() ? step_of(*grad_S, t) : Tensor());
    Tensor grad_y_pred = grad_ym.has_value() ? sum_of(grads.y_pred, step_of(*grad_ym, t)) : grads.y_pred;
    Tensor grad_C_t = grad_C.has_value() ? sum_of(grads.C, step_of(*grad_C, t)) : grads.C;
    Tensor grad_x = mlp_backward_to_input(tape.observation_saved[t], tape.observation, grad_y_pred, grad_C_t,
                                          observation_grads);
    carry_mean = sum_of(step_of(grad_pm, t), to_mean, grad_x), carry_cov = sum_of(step_of(grad_pc, t), grads.cov);
    if (skip_mean.defined()) carry_mean = sum_of(carry_mean, skip_mean), carry_cov = sum_of(carry_cov, skip_cov);
    grad_y[t] = grads.y, grad_R.push_back(grads.R);
  }
  std::reverse(grad_u.begin(), grad_u.end());
  Named out;
  out["y"] = needs_grad_y ? at::stack(grad_y, 1) : Tensor();
  out["u"] = grad_u.empty() ? Tensor() : at::stack(grad_u, 1);
  out["initial_mean"] = carry_mean;
  out["initial_cov"] = symmetrize(carry_cov);
  out["dynamics_cov"] = grad_Q.empty() ? Tensor() : at::stack(grad_Q).sum(0);
  out["obs_cov"] = symmetrize(at::stack(grad_R).sum(0));
  out["dynamics_weights"] = dynamics_grads.result();
  out["observation_weights"] = observation_grads.result();
  return out;
}
