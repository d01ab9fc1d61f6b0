// The RTS smoother's recursion and gains, forward and backward (03a, 'The RTS smoother's recursion').
#pragma once
#include "steps.h"

struct RTSTape {
  Tensor G, mean_gaps, cov_gaps;  // gains (B,T-1,n,n); μ_{t+1|T} − μ⁻_{t+1} (B,T-1,n); Σ_{t+1|T} − Σ⁻_{t+1} (B,T-1,n,n)
};

// Both directions run as plain loops: each batch element's recursion is independent, and every step is a
// few n×n products, which as ATen calls would cost more in overhead than in arithmetic.
static std::tuple<Tensor, Tensor, std::shared_ptr<RTSTape>> rts_forward(
    const Tensor& filtered_means, const Tensor& filtered_covs, const Tensor& next_predicted_means,
    const Tensor& next_predicted_covs, const Tensor& gains) {
  NativeScope scope;
  auto tape = std::make_shared<RTSTape>();
  const int64_t B = gains.size(0), steps = gains.size(1), n = gains.size(-1), T_all = steps + 1;
  tape->G = gains.contiguous();
  if (!loops_pay(n)) {
    Tensor fm = filtered_means.unsqueeze(-1), pm = next_predicted_means.unsqueeze(-1), gains_t = mT(tape->G);
    Tensors means(T_all), covs(T_all), mean_gaps(steps), cov_gaps(steps);
    means[steps] = fm.select(1, steps), covs[steps] = filtered_covs.select(1, steps);
    for (int64_t t = steps - 1; t >= 0; --t) {
      Tensor G = tape->G.select(1, t);
      mean_gaps[t] = means[t + 1] - pm.select(1, t), cov_gaps[t] = covs[t + 1] - next_predicted_covs.select(1, t);
      means[t] = at::baddbmm(fm.select(1, t), G, mean_gaps[t]);
      covs[t] = symmetrize(at::baddbmm(filtered_covs.select(1, t), at::bmm(G, cov_gaps[t]), gains_t.select(1, t)));
    }
    tape->mean_gaps = at::stack(mean_gaps, 1).squeeze(-1), tape->cov_gaps = at::stack(cov_gaps, 1);
    return {at::stack(means, 1).squeeze(-1), at::stack(covs, 1), tape};
  }
  Tensor fm = filtered_means.contiguous(), fc = filtered_covs.contiguous();
  Tensor pm = next_predicted_means.contiguous(), pc = next_predicted_covs.contiguous();
  auto options = fc.options();
  Tensor means = at::empty({B, T_all, n}, options), covs = at::empty({B, T_all, n, n}, options);
  tape->mean_gaps = at::empty({B, steps, n}, options), tape->cov_gaps = at::empty({B, steps, n, n}, options);
  const int64_t nn = n * n;
  AT_DISPATCH_FLOATING_TYPES(fc.scalar_type(), "rts_forward", [&] {
    using T = scalar_t;
    std::vector<T> GD(nn), X(nn);
    const T *fmp = fm.const_data_ptr<T>(), *fcp = fc.const_data_ptr<T>(), *pmp = pm.const_data_ptr<T>();
    const T *pcp = pc.const_data_ptr<T>(), *Gp = tape->G.const_data_ptr<T>();
    T *mp = means.data_ptr<T>(), *cp = covs.data_ptr<T>();
    T *dmp = tape->mean_gaps.data_ptr<T>(), *dcp = tape->cov_gaps.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t last = b * T_all + steps;
      std::copy(fmp + last * n, fmp + (last + 1) * n, mp + last * n);
      std::copy(fcp + last * nn, fcp + (last + 1) * nn, cp + last * nn);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int64_t here = b * T_all + t, gap = b * steps + t;
        const T *G = Gp + gap * nn, *next_mean = mp + (here + 1) * n, *next_cov = cp + (here + 1) * nn;
        T *dm = dmp + gap * n, *dc = dcp + gap * nn, *mean = mp + here * n, *cov = cp + here * nn;
        for (int64_t i = 0; i < n; ++i) dm[i] = next_mean[i] - pmp[gap * n + i];
        for (int64_t i = 0; i < nn; ++i) dc[i] = next_cov[i] - pcp[gap * nn + i];
        std::copy(fmp + here * n, fmp + (here + 1) * n, mean);  // μ_t + G Δμ
        product<false, false, true>(mean, G, dm, n, n, 1);
        product<false, false>(GD.data(), G, dc, n, n, n);  // sym(Σ_t + G ΔΣ Gᵀ)
        std::copy(fcp + here * nn, fcp + (here + 1) * nn, X.data());
        product<false, true, true>(X.data(), GD.data(), G, n, n, n);
        symmetric_part(cov, X.data(), n);
      }
    }
  });
  return {means, covs, tape};
}

static Tensors rts_backward(const RTSTape& tape, const std::optional<Tensor>& grad_means,
                            const std::optional<Tensor>& grad_covs) {
  NativeScope scope;
  const int64_t B = tape.G.size(0), steps = tape.G.size(1), n = tape.G.size(-1), T_all = steps + 1, nn = n * n;
  auto options = tape.G.options();
  if (!loops_pay(n)) {
    Tensor gm = grad_means.has_value() ? grad_means->unsqueeze(-1) : at::zeros({B, T_all, n, 1}, options);
    Tensor gc = grad_covs.has_value() ? symmetrize(*grad_covs) : at::zeros({B, T_all, n, n}, options);
    Tensor carry_mean = gm.select(1, 0), carry_cov = gc.select(1, 0);
    Tensors to_fm, to_fc, to_gap_mean, to_gap_cov, to_G;
    for (int64_t t = 0; t < steps; ++t) {
      Tensor G = tape.G.select(1, t), mean_gap = tape.mean_gaps.select(1, t).unsqueeze(-1);
      to_fm.push_back(carry_mean), to_fc.push_back(carry_cov);
      Tensor CG = at::bmm(carry_cov, G);
      to_G.push_back(at::baddbmm(at::bmm(carry_mean, mT(mean_gap)), CG, tape.cov_gaps.select(1, t), 1, 2));
      Tensor gap_mean = at::bmm(mT(G), carry_mean), gap_cov = at::bmm(mT(G), CG);
      to_gap_mean.push_back(gap_mean), to_gap_cov.push_back(gap_cov);
      carry_mean = gm.select(1, t + 1) + gap_mean, carry_cov = gc.select(1, t + 1) + gap_cov;
    }
    to_fm.push_back(carry_mean), to_fc.push_back(carry_cov);
    return {at::stack(to_fm, 1).squeeze(-1), at::stack(to_fc, 1), -at::stack(to_gap_mean, 1).squeeze(-1),
            -at::stack(to_gap_cov, 1), at::stack(to_G, 1)};
  }
  Tensor gm = grad_means.has_value() ? grad_means->contiguous() : Tensor();
  Tensor gc = grad_covs.has_value() ? grad_covs->contiguous() : Tensor();
  Tensor to_fm = at::empty({B, T_all, n}, options), to_fc = at::empty({B, T_all, n, n}, options);
  Tensor to_pm = at::empty({B, steps, n}, options), to_pc = at::empty({B, steps, n, n}, options);
  Tensor to_G = at::empty({B, steps, n, n}, options);
  AT_DISPATCH_FLOATING_TYPES(tape.G.scalar_type(), "rts_backward", [&] {
    using T = scalar_t;
    std::vector<T> CG(nn), flow(nn);
    const T *Gp = tape.G.const_data_ptr<T>(), *dmp = tape.mean_gaps.const_data_ptr<T>();
    const T* dcp = tape.cov_gaps.const_data_ptr<T>();
    const T* gmp = gm.defined() ? gm.const_data_ptr<T>() : nullptr;
    const T* gcp = gc.defined() ? gc.const_data_ptr<T>() : nullptr;
    T *fmp = to_fm.data_ptr<T>(), *fcp = to_fc.data_ptr<T>(), *pmp = to_pm.data_ptr<T>();
    T *pcp = to_pc.data_ptr<T>(), *tGp = to_G.data_ptr<T>();
    // the carried gradients live in to_fm, to_fc: step t's carry is what flows into the filtered belief of t
    auto seed = [&](int64_t index, T* mean, T* cov) {  // ∂ℓ/∂μ_{t|T}, sym(∂ℓ/∂Σ_{t|T}) of step `index`
      for (int64_t i = 0; i < n; ++i) mean[i] = gmp ? gmp[index * n + i] : T(0);
      if (gcp) symmetric_part(cov, gcp + index * nn, n);
      else std::fill(cov, cov + nn, T(0));
    };
    for (int64_t b = 0; b < B; ++b) {
      seed(b * T_all, fmp + b * T_all * n, fcp + b * T_all * nn);
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t here = b * T_all + t, gap = b * steps + t;
        const T *G = Gp + gap * nn, *dm = dmp + gap * n, *dc = dcp + gap * nn;
        const T *carry_mean = fmp + here * n, *carry_cov = fcp + here * nn;
        T *next_mean = fmp + (here + 1) * n, *next_cov = fcp + (here + 1) * nn, *gG = tGp + gap * nn;
        product<false, false>(CG.data(), carry_cov, G, n, n, n);
        product<false, true>(gG, carry_mean, dm, n, 1, n);  // ∂G = c Δμᵀ + 2 C G ΔΣ
        product<false, false, true>(gG, CG.data(), dc, n, n, n, T(2));
        seed(here + 1, next_mean, next_cov);  // Gᵀ c and Gᵀ C G flow on to step t + 1, and negated to the priors
        product<true, false>(flow.data(), G, carry_mean, n, n, 1);
        for (int64_t i = 0; i < n; ++i) next_mean[i] += flow[i], pmp[gap * n + i] = -flow[i];
        product<true, false>(flow.data(), G, CG.data(), n, n, n);
        for (int64_t i = 0; i < nn; ++i) next_cov[i] += flow[i], pcp[gap * nn + i] = -flow[i];
      }
    }
  });
  return {to_fm, to_fc, to_pm, to_pc, to_G};
}

