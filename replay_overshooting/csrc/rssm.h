// PlaNet's RSSM posterior recursion in one node (07_baselines, 'The recursion in C++'): the loop of
// `baselines.rssm_filter_hoisted` on raw buffers, and its hand-written backward, which runs the steps in reverse for
// the gradients of the states and then gathers every weight's gradient over all steps in one product.
//
// Step t (h_0 = 0; steps t >= 1 run the transition first), with c_t = W_u u_t + b_φ and e_t = W_e emb_t + b_q
// computed outside the loop:
//   x_t = ELU(W_s s_{t-1} + c_{t-1})
//   r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz)
//   n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}      (PyTorch's GRUCell)
//   a_t = ELU(W_h h_t + e_t),  [μ_t, ρ_t] = W_o a_t + b_o,  σ_t = softplus(ρ_t) + σ_min,  s_t = μ_t + σ_t ⊙ ε_t
#pragma once
#include "recurrent.h"

// The tensors of one forward, each (T, B, ·), rows of step t at t·B.
struct RSSMTape {
  int64_t T = 0, B = 0, n = 0, H = 0, D = 0;
  Tensors weights;  // w_s (H, n), w_ih (3D, H), b_ih, w_hh (3D, D), b_hh, w_h (H, D), w_o (2n, H), b_o
  Tensor eps;       // ε (T, B, n)
  Tensor x;         // x_t (T, B, H); step 0's rows unused
  Tensor gates;     // r, z, n (T, B, 3D); step 0's rows unused
  Tensor hidden_n;  // W_hn h_{t-1} + b_hn (T, B, D); step 0's rows unused
  Tensor h, a, raw_std, s;  // h_t (T, B, D), a_t (T, B, H), ρ_t and s_t (T, B, n)
};

template <typename T>
static void rssm_forward_impl(RSSMTape& tp, const T* control, const T* embedding, T* h, T* s, T* mean, T* std_dev,
                              double min_std) {
  const int64_t B = tp.B, n = tp.n, H = tp.H, D = tp.D;
  // the products' weights transposed, (in, out), so that every product reads them by contiguous rows (`gemm`)
  const Tensor w_s_t = tp.weights[0].t().contiguous(), w_ih_t = tp.weights[1].t().contiguous(),
               w_hh_t = tp.weights[3].t().contiguous(), w_h_t = tp.weights[5].t().contiguous(),
               w_o_t = tp.weights[6].t().contiguous();
  const T *w_s = w_s_t.const_data_ptr<T>(), *w_ih = w_ih_t.const_data_ptr<T>(),
          *b_ih = tp.weights[2].const_data_ptr<T>(), *w_hh = w_hh_t.const_data_ptr<T>(),
          *b_hh = tp.weights[4].const_data_ptr<T>(), *w_h = w_h_t.const_data_ptr<T>(),
          *w_o = w_o_t.const_data_ptr<T>(), *b_o = tp.weights[7].const_data_ptr<T>();
  const T* eps = tp.eps.const_data_ptr<T>();
  T *x = tp.x.data_ptr<T>(), *gates = tp.gates.data_ptr<T>(), *hidden_n = tp.hidden_n.data_ptr<T>(),
    *a = tp.a.data_ptr<T>(), *raw = tp.raw_std.data_ptr<T>();
  auto input_part = scratch<T>(B * 3 * D), hidden_part = scratch<T>(B * 3 * D), out = scratch<T>(B * 2 * n);
  for (int64_t t = 0; t < tp.T; ++t) {
    T* h_t = h + t * B * D;
    if (t == 0) {
      std::fill(h_t, h_t + B * D, T(0));
    } else {
      T* x_t = x + t * B * H;
      std::copy(control + (t - 1) * B * H, control + t * B * H, x_t);
      gemm<T>(false, B, H, n, s + (t - 1) * B * n, n, w_s, H, T(1), x_t, H);
      elu_inplace(x_t, B * H);
      const T* h_prev = h + (t - 1) * B * D;
      fill_rows(input_part.get(), b_ih, B, 3 * D);
      gemm<T>(false, B, 3 * D, H, x_t, H, w_ih, 3 * D, T(1), input_part.get(), 3 * D);
      fill_rows(hidden_part.get(), b_hh, B, 3 * D);
      gemm<T>(false, B, 3 * D, D, h_prev, D, w_hh, 3 * D, T(1), hidden_part.get(), 3 * D);
      gru_cell_forward(input_part.get(), hidden_part.get(), h_prev, gates + t * B * 3 * D, hidden_n + t * B * D, h_t,
                       B, D);
    }
    T* a_t = a + t * B * H;
    std::copy(embedding + t * B * H, embedding + (t + 1) * B * H, a_t);
    gemm<T>(false, B, H, D, h_t, D, w_h, H, T(1), a_t, H);
    gaussian_head_forward(a_t, w_o, b_o, eps + t * B * n, mean + t * B * n, raw + t * B * n, std_dev + t * B * n,
                          s + t * B * n, out.get(), B, H, n, min_std);
  }
}

// Forward: control c (T, B, H) (step T−1's unused), embedding e (T, B, H), noise ε (T, B, n), the weights in the
// tape's order; returns {h, s, mean, std}, each (T, B, ·), and the tape.
static std::pair<Named, std::shared_ptr<RSSMTape>> rssm_posterior_forward(const Tensor& control,
                                                                          const Tensor& embedding,
                                                                          const Tensor& noise, const Tensors& weights,
                                                                          double min_std) {
  NativeScope scope;
  auto tp = std::make_shared<RSSMTape>();
  for (const auto& w : weights) tp->weights.push_back(w.contiguous());
  tp->T = embedding.size(0), tp->B = embedding.size(1), tp->H = embedding.size(2);
  tp->n = tp->weights[0].size(1), tp->D = tp->weights[3].size(1);
  const int64_t T = tp->T, B = tp->B, n = tp->n, H = tp->H, D = tp->D;
  const auto options = embedding.options();
  tp->eps = noise.contiguous();
  tp->x = at::empty({T, B, H}, options), tp->gates = at::empty({T, B, 3 * D}, options);
  tp->hidden_n = at::empty({T, B, D}, options), tp->h = at::empty({T, B, D}, options);
  tp->a = at::empty({T, B, H}, options), tp->raw_std = at::empty({T, B, n}, options);
  tp->s = at::empty({T, B, n}, options);
  Tensor mean = at::empty({T, B, n}, options), std_dev = at::empty({T, B, n}, options);
  Tensor c = control.contiguous(), e = embedding.contiguous();
  AT_DISPATCH_FLOATING_TYPES(embedding.scalar_type(), "rssm_posterior_forward", [&] {
    rssm_forward_impl<scalar_t>(*tp, c.const_data_ptr<scalar_t>(), e.const_data_ptr<scalar_t>(),
                                tp->h.data_ptr<scalar_t>(), tp->s.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                                std_dev.data_ptr<scalar_t>(), min_std);
  });
  Named out;
  out["h"] = tp->h, out["s"] = tp->s, out["mean"] = mean, out["std"] = std_dev;
  return {out, tp};
}

template <typename T>
static void rssm_backward_impl(const RSSMTape& tp, const T* g_h, const T* g_s, const T* g_mean, const T* g_std,
                               T* g_control, T* g_embedding, const Tensors& g_weights) {
  const int64_t steps = tp.T, B = tp.B, n = tp.n, H = tp.H, D = tp.D;
  const T *w_s = tp.weights[0].const_data_ptr<T>(), *w_ih = tp.weights[1].const_data_ptr<T>(),
          *w_hh = tp.weights[3].const_data_ptr<T>(), *w_h = tp.weights[5].const_data_ptr<T>(),
          *w_o = tp.weights[6].const_data_ptr<T>();
  const T *eps = tp.eps.const_data_ptr<T>(), *x = tp.x.const_data_ptr<T>(), *gates = tp.gates.const_data_ptr<T>(),
          *hidden_n = tp.hidden_n.const_data_ptr<T>(), *h = tp.h.const_data_ptr<T>(), *a = tp.a.const_data_ptr<T>(),
          *s = tp.s.const_data_ptr<T>();
  // Per-step gradients of the products' outputs, kept for the weight gradients: [μ, ρ] (T, B, 2n), the
  // posterior layer's input a (T, B, H) (= ∂e), the GRU's input-side and hidden-side pre-activations (T, B, 3D),
  // and the transition layer's (T, B, H) (= ∂c of the step before).
  auto g_out = scratch<T>(steps * B * 2 * n), g_input = scratch<T>(steps * B * 3 * D),
       g_hidden = scratch<T>(steps * B * 3 * D);
  T* g_pre_a = g_embedding;
  T* g_pre_x = g_control;  // g_pre_x row block t is ∂c_{t-1}: written at t−1's place below
  auto g_h_carry = scratch<T>(B * D), g_s_carry = scratch<T>(B * n), g_h_total = scratch<T>(B * D),
       g_x = scratch<T>(B * H);
  const Tensor slopes = softplus_slopes(tp.raw_std);
  const T* slope = slopes.const_data_ptr<T>();
  std::fill(g_h_carry.get(), g_h_carry.get() + B * D, T(0));
  std::fill(g_s_carry.get(), g_s_carry.get() + B * n, T(0));
  std::fill(g_control + (steps - 1) * B * H, g_control + steps * B * H, T(0));
  for (int64_t t = steps - 1; t >= 0; --t) {
    T *go = g_out.get() + t * B * 2 * n, *gpa = g_pre_a + t * B * H;
    const int64_t step = t * B * n;
    gaussian_head_backward(g_s + step, g_s_carry.get(), g_mean + step, g_std + step, eps + step, slope + step,
                           a + t * B * H, w_o, go, gpa, B, H, n);
    T* gH = g_h_total.get();
    for (int64_t i = 0; i < B * D; ++i) gH[i] = g_h[t * B * D + i] + g_h_carry[i];
    gemm<T>(false, B, D, H, gpa, H, w_h, D, T(1), gH, D);
    if (t == 0) break;
    const T *h_prev = h + (t - 1) * B * D, *g = gates + t * B * 3 * D, *hn = hidden_n + t * B * D;
    T *gi = g_input.get() + t * B * 3 * D, *gh = g_hidden.get() + t * B * 3 * D, *carry = g_h_carry.get();
    gru_cell_backward(g, hn, h_prev, gH, gi, gh, carry, B, D);
    gemm<T>(false, B, D, 3 * D, gh, 3 * D, w_hh, D, T(1), carry, D);
    gemm<T>(false, B, H, 3 * D, gi, 3 * D, w_ih, H, T(0), g_x.get(), H);
    T* gpx = g_pre_x + (t - 1) * B * H;
    const T* x_t = x + t * B * H;
    for (int64_t i = 0; i < B * H; ++i) gpx[i] = g_x[i] * elu_slope(x_t[i]);
    gemm<T>(false, B, n, H, gpx, H, w_s, n, T(0), g_s_carry.get(), n);
  }
  // Weight gradients, each one product over the steps' rows: ∂W = Σ_t (∂out_t)ᵀ in_t.
  const int64_t all = steps * B, later = (steps - 1) * B;
  T *gw_s = g_weights[0].data_ptr<T>(), *gw_ih = g_weights[1].data_ptr<T>(), *gb_ih = g_weights[2].data_ptr<T>(),
    *gw_hh = g_weights[3].data_ptr<T>(), *gb_hh = g_weights[4].data_ptr<T>(), *gw_h = g_weights[5].data_ptr<T>(),
    *gw_o = g_weights[6].data_ptr<T>(), *gb_o = g_weights[7].data_ptr<T>();
  gemm<T>(true, H, n, later, g_pre_x, H, s, n, T(0), gw_s, n);
  gemm<T>(true, 3 * D, H, later, g_input.get() + B * 3 * D, 3 * D, x + B * H, H, T(0), gw_ih, H);
  column_sums(g_input.get() + B * 3 * D, later, 3 * D, gb_ih);
  gemm<T>(true, 3 * D, D, later, g_hidden.get() + B * 3 * D, 3 * D, h, D, T(0), gw_hh, D);
  column_sums(g_hidden.get() + B * 3 * D, later, 3 * D, gb_hh);
  gemm<T>(true, H, D, all, g_pre_a, H, h, D, T(0), gw_h, D);
  gemm<T>(true, 2 * n, H, all, g_out.get(), 2 * n, a, H, T(0), gw_o, H);
  column_sums(g_out.get(), all, 2 * n, gb_o);
}

// Backward: the gradients of {h, s, mean, std} (T, B, ·); returns {control, embedding} (T, B, H) and the
// weights' gradients in the tape's order.
static Named rssm_posterior_backward(const std::shared_ptr<RSSMTape>& tp, const Tensor& g_h, const Tensor& g_s,
                                     const Tensor& g_mean, const Tensor& g_std) {
  NativeScope scope;
  const auto options = tp->h.options();
  Tensor gh = g_h.contiguous(), gs = g_s.contiguous(), gm = g_mean.contiguous(), gsd = g_std.contiguous();
  Tensor g_control = at::empty({tp->T, tp->B, tp->H}, options), g_embedding = at::empty({tp->T, tp->B, tp->H}, options);
  Tensors g_weights;
  for (const auto& w : tp->weights) g_weights.push_back(at::empty_like(w));
  AT_DISPATCH_FLOATING_TYPES(tp->h.scalar_type(), "rssm_posterior_backward", [&] {
    rssm_backward_impl<scalar_t>(*tp, gh.const_data_ptr<scalar_t>(), gs.const_data_ptr<scalar_t>(),
                                 gm.const_data_ptr<scalar_t>(), gsd.const_data_ptr<scalar_t>(),
                                 g_control.data_ptr<scalar_t>(), g_embedding.data_ptr<scalar_t>(), g_weights);
  });
  Named out;
  out["control"] = g_control, out["embedding"] = g_embedding, out["weights"] = g_weights;
  return out;
}
