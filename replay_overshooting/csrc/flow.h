// The CT-EKF's time update in one node (03a, 'The belief flow'): the flat belief Y = [μ, P, Φ] integrated over
// [0, t1] by the adaptive Dormand–Prince 5(4) steps of `continuous.dormand_prince` (02_continuous), the same
// tableau, error norm and step control, each stage an evaluation of `field.h`'s belief field; and the adjoint of
// the accepted steps, with their step sizes held fixed as the reference's autograd holds them.
#pragma once
#include "field.h"

// The rows a_i of stages 2..7 (the last, b, gives the 5th-order solution) and the error weights b5 − b4.
static const double kStages[6][6] = {
    {1. / 5},
    {3. / 40, 9. / 40},
    {44. / 45, -56. / 15, 32. / 9},
    {19372. / 6561, -25360. / 2187, 64448. / 6561, -212. / 729},
    {9017. / 3168, -355. / 33, 46732. / 5247, 49. / 176, -5103. / 18656},
    {35. / 384, 0., 500. / 1113, 125. / 192, -2187. / 6784, 11. / 84}};
static const double kFourthOrder[7] = {5179. / 57600, 0., 7571. / 16695, 393. / 640, -92097. / 339200,
                                       187. / 2100, 1. / 40};

struct FlowStep {
  double h;
  std::vector<BeliefFieldStage> stages;  // the evaluations of k2..k7 (k1 is the step before's k7)
};

struct BeliefFlowTape {
  BeliefFieldInputs in;
  BeliefFieldStage start;       // k1 of the first step, the field at Y(0)
  std::vector<FlowStep> steps;  // the accepted steps
};

// `out = y + Σ_j (h w_j) k_j` over the nonzero weights, in the reference's order (the first term, then the rest
// added one by one).
template <typename T>
static void stage_sum(T* out, const T* y, double h, const double* weights, const std::vector<const T*>& k,
                      int64_t size) {
  bool first = true;
  for (size_t j = 0; j < k.size(); ++j) {
    if (weights[j] == 0.0) continue;
    const T alpha = static_cast<T>(h * weights[j]);
    const T* kj = k[j];
    if (first) for (int64_t e = 0; e < size; ++e) out[e] = y[e] + alpha * kj[e];
    else for (int64_t e = 0; e < size; ++e) out[e] += alpha * kj[e];
    first = false;
  }
}

// The largest RMS of x over the state's three tensors (columns [0, n), [n, n + n²), [n + n², N) of every row), as
// `continuous._mixed_rms`; NaN if any is.
template <typename T>
static double mixed_rms(const T* x, int64_t B, int64_t n) {
  const int64_t nn = n * n, N = n + 2 * nn, starts[4] = {0, n, n + nn, N};
  double largest = 0;
  for (int part = 0; part < 3; ++part) {
    double sum = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = starts[part]; c < starts[part + 1]; ++c) sum += double(x[b * N + c]) * double(x[b * N + c]);
    const double rms = std::sqrt(sum / double(B * (starts[part + 1] - starts[part])));
    if (std::isnan(rms)) return rms;
    largest = std::max(largest, rms);
  }
  return largest;
}

// Y(t1) (B, N) from Y(0), the evaluations made, and a message saying why the solve stopped (empty if it did not).
// A negative `first_step` asks for Hairer's estimate.
static std::tuple<Tensor, int64_t, std::string, std::shared_ptr<BeliefFlowTape>> belief_flow_forward(
    const Tensor& Y0_in, const std::optional<Tensor>& u, const Tensor& Q_in, const Tensors& params, int64_t activation,
    double beta, int64_t n, double t1, double rtol, double atol, double first_step) {
  NativeScope scope;
  auto tape = std::make_shared<BeliefFlowTape>();
  const int64_t B = Y0_in.size(0), nn = n * n, N = n + 2 * nn, size = B * N;
  TORCH_CHECK(Y0_in.dim() == 2 && Y0_in.size(1) == N, "belief flow: the state must be (B, n + 2n²)");
  BeliefFieldInputs& in = tape->in;
  in.n = n, in.layers = make_layers(params, activation, beta, n);
  in.Q = Q_in.expand({B, n, n}).contiguous();
  if (u.has_value()) in.u = u->contiguous();
  Tensor y = Y0_in.contiguous();
  if (size == 0) return {y.clone(), 0, "", tape};  // an empty batch, as the reference: nothing to step
  int64_t evaluations = 0;
  auto field = [&](const Tensor& at_state, BeliefFieldStage& stage) { ++evaluations; return belief_field(at_state, in, stage); };
  Tensor slope = field(y, tape->start);
  std::string failure;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "belief_flow", [&] {
    using T = scalar_t;
    const double safety = 0.9, ifactor = 10.0, dfactor = 0.2;
    std::vector<T> work(size);
    double h = first_step;
    if (h < 0) {  // none given: Hairer's first step, one more evaluation
      const T *yv = y.const_data_ptr<T>(), *f = slope.const_data_ptr<T>();
      std::vector<T> scaled_y(size), scaled_f(size);
      std::vector<T> scale(size);
      for (int64_t e = 0; e < size; ++e) {
        scale[e] = T(atol) + T(rtol) * std::abs(yv[e]);
        scaled_y[e] = yv[e] / scale[e], scaled_f[e] = f[e] / scale[e];
      }
      const double d0 = mixed_rms(scaled_y.data(), B, n), d1 = mixed_rms(scaled_f.data(), B, n);
      const double h0 = d0 < 1e-5 || d1 < 1e-5 ? 1e-6 : 0.01 * d0 / d1;
      Tensor probe = at::empty_like(y);
      T* p = probe.data_ptr<T>();
      for (int64_t e = 0; e < size; ++e) p[e] = yv[e] + T(h0) * f[e];
      BeliefFieldStage discarded;
      Tensor f1 = field(probe, discarded);
      const T* g = f1.const_data_ptr<T>();
      for (int64_t e = 0; e < size; ++e) work[e] = (g[e] - f[e]) / scale[e];
      const double d2 = mixed_rms(work.data(), B, n) / h0, d12 = std::max(d1, d2);
      const double h1 = d12 <= 1e-15 ? std::max(1e-6, h0 * 1e-3) : std::pow(0.01 / d12, 1.0 / 5);
      h = std::min(100 * h0, h1);
    }
    double t = 0;
    while (true) {
      const bool last = h >= t1 - t;
      if (last) h = t1 - t;
      if (!(t + h > t)) {
        failure = "the step size underflowed (h = " + std::to_string(h) + ") at t = " + std::to_string(t) + " of " +
                  std::to_string(t1);
        return;
      }
      FlowStep step{h, std::vector<BeliefFieldStage>(6)};
      std::vector<Tensor> slopes{slope};
      std::vector<const T*> k{slope.const_data_ptr<T>()};
      Tensor next;
      for (int r = 0; r < 6; ++r) {
        Tensor stage_state = at::empty_like(y);
        stage_sum(stage_state.data_ptr<T>(), y.const_data_ptr<T>(), h, kStages[r], k, size);
        if (r == 5) next = stage_state;
        slopes.push_back(field(stage_state, step.stages[r]));
        k.push_back(slopes.back().const_data_ptr<T>());
      }
      const T *yv = y.const_data_ptr<T>(), *yn = next.const_data_ptr<T>();
      for (int64_t e = 0; e < size; ++e) {  // error / tolerance, the error summed as the reference sums it
        T error = 0;
        bool first = true;
        for (int j = 0; j < 7; ++j) {
          const double weight = (j < 6 ? kStages[5][j] : 0.0) - kFourthOrder[j];
          if (weight == 0.0) continue;
          const T term = static_cast<T>(h * weight) * k[j][e];
          error = first ? T(0) + term : error + term;
          first = false;
        }
        work[e] = error / (T(atol) + T(rtol) * std::max(std::abs(yv[e]), std::abs(yn[e])));
      }
      const double ratio = mixed_rms(work.data(), B, n);
      if (!std::isfinite(ratio)) {
        failure = "the error estimate is not finite at t = " + std::to_string(t) + " of " + std::to_string(t1) +
                  ": the field or the state holds inf or NaN";
        return;
      }
      if (ratio <= 1) {
        t += h, y = next, slope = slopes.back();
        tape->steps.push_back(std::move(step));
        if (last) return;
      }
      h *= ratio == 0 ? ifactor
                      : std::min(ifactor, std::max(safety * std::pow(ratio, -0.2), ratio >= 1 ? dfactor : 1.0));
    }
  });
  // A copy: the last stage's tape holds `y`, and the output's autograd node will hold the tape.
  return {y.clone(), evaluations, failure, tape};
}

// The gradients of Y(0), the controls `u`, Q and the network's `weights`, by name, from ∂ℓ/∂Y(t1). Backwards
// through each accepted step: the adjoint of y_next = Y_7 is the incoming one, plus k7's pull-back where k7 is
// the next step's k1; each stage's adjoint pulls its k back through the field and adds h a_ij of itself to the k
// it summed.
static Named belief_flow_backward(const BeliefFlowTape& tape, const Tensor& grad_in) {
  NativeScope scope;
  const BeliefFieldInputs& in = tape.in;
  WeightGradients weights{&in.layers};
  Tensor grad_Q = at::zeros_like(in.Q), grad_u = in.u.defined() ? at::zeros_like(in.u) : Tensor();
  Tensor grad_y = grad_in.contiguous().clone(), carry;  // carry: ∂ℓ/∂k7 of the step after, its k1
  auto adjoint = [&](const BeliefFieldStage& stage, const Tensor& G) {
    return belief_field_adjoint(stage, in, G, weights, grad_u, grad_Q);
  };
  for (auto step = tape.steps.rbegin(); step != tape.steps.rend(); ++step) {
    std::vector<Tensor> grad_k(7);
    for (auto& g : grad_k) g = at::zeros_like(grad_y);
    Tensor stage_grad = carry.defined() ? grad_y + adjoint(step->stages[5], carry) : grad_y;
    Tensor grad_y_before = stage_grad.clone();
    for (int r = 5; r >= 0; --r) {
      if (r < 5) {
        stage_grad = adjoint(step->stages[r], grad_k[r + 1]);
        grad_y_before.add_(stage_grad);
      }
      for (int j = 0; j <= r; ++j)
        if (kStages[r][j] != 0.0) grad_k[j].add_(stage_grad, step->h * kStages[r][j]);
    }
    grad_y = grad_y_before, carry = grad_k[0];
  }
  if (carry.defined()) grad_y.add_(adjoint(tape.start, carry));
  Named out;
  out["Y"] = grad_y;
  out["u"] = grad_u;
  out["Q"] = grad_Q;
  out["weights"] = weights.result();
  return out;
}
