// The GSSM's two recursions, each in one node (07_baselines, 'The GSSM in C++'): the backward GRU of the inference
// network and the ancestral posterior recursion, the loops of `GSSM.summaries` (PyTorch's GRU) and `gssm_infer`
// on raw buffers, with hand-written backward passes that run the steps in reverse for the gradients of the states
// and then gather every weight's gradient over all steps in one product.
//
// GRU, over its input sequence in the order it runs (the caller reverses time), h_{-1} = 0, with the input side
// gi_t = W_ih x_t + b_ih computed outside the loop:
//   gh_t = W_hh h_{t-1} + b_hh,  h_t = GRUCell(gi_t, gh_t, h_{t-1})                       (`recurrent.h`)
// Posterior, z_{-1} = 0, with the combiner's input side c_t = W_u u_{t-1} + W_b b_t + b computed outside the loop:
//   a_t = ELU(W_z z_{t-1} + c_t),  [μ_t, ρ_t] = W_o a_t + b_o,  σ_t = softplus(ρ_t) + σ_min,  z_t = μ_t + σ_t ⊙ ε_t
#pragma once
#include "recurrent.h"

// The tensors of one GRU forward, each (T, B, ·), rows of step t at t·B.
struct GRUTape {
  int64_t T = 0, B = 0, D = 0;
  Tensor w_hh, b_hh;  // (3D, D), (3D)
  Tensor gates;       // r, z, n (T, B, 3D)
  Tensor hidden_n;    // W_hn h_{t-1} + b_hn (T, B, D)
  Tensor h;           // h_t (T, B, D)
};

template <typename T>
static void gru_forward_impl(GRUTape& tp, const T* input_part) {
  const int64_t B = tp.B, D = tp.D;
  const Tensor w_hh_t = tp.w_hh.t().contiguous();  // (D, 3D): read by contiguous rows (`gemm`)
  const T *w_hh = w_hh_t.const_data_ptr<T>(), *b_hh = tp.b_hh.const_data_ptr<T>();
  T *gates = tp.gates.data_ptr<T>(), *hidden_n = tp.hidden_n.data_ptr<T>(), *h = tp.h.data_ptr<T>();
  auto hidden_part = scratch<T>(B * 3 * D), zeros = scratch<T>(B * D);
  std::fill(zeros.get(), zeros.get() + B * D, T(0));
  for (int64_t t = 0; t < tp.T; ++t) {
    const T* h_prev = t == 0 ? zeros.get() : h + (t - 1) * B * D;
    fill_rows(hidden_part.get(), b_hh, B, 3 * D);
    if (t > 0) gemm<T>(false, B, 3 * D, D, h_prev, D, w_hh, 3 * D, T(1), hidden_part.get(), 3 * D);
    gru_cell_forward(input_part + t * B * 3 * D, hidden_part.get(), h_prev, gates + t * B * 3 * D,
                     hidden_n + t * B * D, h + t * B * D, B, D);
  }
}

// Forward: the input side gi (T, B, 3D), w_hh (3D, D), b_hh (3D); returns h (T, B, D) and the tape.
static std::pair<Tensor, std::shared_ptr<GRUTape>> gru_forward(const Tensor& input_part, const Tensor& w_hh,
                                                               const Tensor& b_hh) {
  NativeScope scope;
  auto tp = std::make_shared<GRUTape>();
  tp->w_hh = w_hh.contiguous(), tp->b_hh = b_hh.contiguous();
  tp->T = input_part.size(0), tp->B = input_part.size(1), tp->D = tp->w_hh.size(1);
  const auto options = input_part.options();
  tp->gates = at::empty({tp->T, tp->B, 3 * tp->D}, options);
  tp->hidden_n = at::empty({tp->T, tp->B, tp->D}, options), tp->h = at::empty({tp->T, tp->B, tp->D}, options);
  const Tensor gi = input_part.contiguous();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_forward",
                             [&] { gru_forward_impl<scalar_t>(*tp, gi.const_data_ptr<scalar_t>()); });
  return {tp->h, tp};
}

template <typename T>
static void gru_backward_impl(const GRUTape& tp, const T* g_h, T* g_input, T* g_w_hh, T* g_b_hh) {
  const int64_t steps = tp.T, B = tp.B, D = tp.D;
  const T *w_hh = tp.w_hh.const_data_ptr<T>(), *gates = tp.gates.const_data_ptr<T>(),
          *hidden_n = tp.hidden_n.const_data_ptr<T>(), *h = tp.h.const_data_ptr<T>();
  // the hidden-side pre-activations' gradients of every step (T, B, 3D), kept for W_hh's and b_hh's
  auto g_hidden = scratch<T>(steps * B * 3 * D), carry = scratch<T>(B * D), g_h_total = scratch<T>(B * D),
       zeros = scratch<T>(B * D);
  std::fill(carry.get(), carry.get() + B * D, T(0));
  std::fill(zeros.get(), zeros.get() + B * D, T(0));
  for (int64_t t = steps - 1; t >= 0; --t) {
    T* gH = g_h_total.get();
    for (int64_t i = 0; i < B * D; ++i) gH[i] = g_h[t * B * D + i] + carry[i];
    T* gh = g_hidden.get() + t * B * 3 * D;
    const T* h_prev = t == 0 ? zeros.get() : h + (t - 1) * B * D;
    gru_cell_backward(gates + t * B * 3 * D, hidden_n + t * B * D, h_prev, gH, g_input + t * B * 3 * D, gh,
                      carry.get(), B, D);
    if (t > 0) gemm<T>(false, B, D, 3 * D, gh, 3 * D, w_hh, D, T(1), carry.get(), D);
  }
  // ∂W_hh = Σ_{t ≥ 1} (∂gh_t)ᵀ h_{t-1} (h_{-1} = 0 adds nothing), ∂b_hh = Σ_t ∂gh_t
  gemm<T>(true, 3 * D, D, (steps - 1) * B, g_hidden.get() + B * 3 * D, 3 * D, h, D, T(0), g_w_hh, D);
  column_sums(g_hidden.get(), steps * B, 3 * D, g_b_hh);
}

// Backward: the gradient of h (T, B, D); returns {input (T, B, 3D), w_hh, b_hh}.
static Named gru_backward(const std::shared_ptr<GRUTape>& tp, const Tensor& g_h) {
  NativeScope scope;
  const Tensor gh = g_h.contiguous();
  Tensor g_input = at::empty({tp->T, tp->B, 3 * tp->D}, gh.options()), g_w_hh = at::empty_like(tp->w_hh),
         g_b_hh = at::empty_like(tp->b_hh);
  AT_DISPATCH_FLOATING_TYPES(gh.scalar_type(), "gru_backward", [&] {
    gru_backward_impl<scalar_t>(*tp, gh.const_data_ptr<scalar_t>(), g_input.data_ptr<scalar_t>(),
                                g_w_hh.data_ptr<scalar_t>(), g_b_hh.data_ptr<scalar_t>());
  });
  Named out;
  out["input"] = g_input, out["w_hh"] = g_w_hh, out["b_hh"] = g_b_hh;
  return out;
}

// The tensors of one posterior forward, each (T, B, ·), rows of step t at t·B.
struct GSSMTape {
  int64_t T = 0, B = 0, n = 0, H = 0;
  Tensors weights;  // w_z (H, n), w_o (2n, H), b_o (2n)
  Tensor eps;       // ε (T, B, n)
  Tensor a, raw_std, z;  // a_t (T, B, H), ρ_t and z_t (T, B, n)
};

template <typename T>
static void gssm_forward_impl(GSSMTape& tp, const T* context, T* mean, T* std_dev, double min_std) {
  const int64_t B = tp.B, n = tp.n, H = tp.H;
  const Tensor w_z_t = tp.weights[0].t().contiguous(), w_o_t = tp.weights[1].t().contiguous();
  const T *w_z = w_z_t.const_data_ptr<T>(), *w_o = w_o_t.const_data_ptr<T>(), *b_o = tp.weights[2].const_data_ptr<T>(),
          *eps = tp.eps.const_data_ptr<T>();
  T *a = tp.a.data_ptr<T>(), *raw = tp.raw_std.data_ptr<T>(), *z = tp.z.data_ptr<T>();
  auto out = scratch<T>(B * 2 * n);
  for (int64_t t = 0; t < tp.T; ++t) {
    T* a_t = a + t * B * H;
    std::copy(context + t * B * H, context + (t + 1) * B * H, a_t);
    if (t > 0) gemm<T>(false, B, H, n, z + (t - 1) * B * n, n, w_z, H, T(1), a_t, H);
    const int64_t step = t * B * n;
    gaussian_head_forward(a_t, w_o, b_o, eps + step, mean + step, raw + step, std_dev + step, z + step, out.get(), B,
                          H, n, min_std);
  }
}

// Forward: the combiner's input side c (T, B, H), noise ε (T, B, n), the weights in the tape's order; returns
// {z, mean, std}, each (T, B, n), and the tape.
static std::pair<Named, std::shared_ptr<GSSMTape>> gssm_posterior_forward(const Tensor& context, const Tensor& noise,
                                                                          const Tensors& weights, double min_std) {
  NativeScope scope;
  auto tp = std::make_shared<GSSMTape>();
  for (const auto& w : weights) tp->weights.push_back(w.contiguous());
  tp->T = context.size(0), tp->B = context.size(1), tp->H = context.size(2), tp->n = tp->weights[0].size(1);
  const int64_t T = tp->T, B = tp->B, n = tp->n, H = tp->H;
  const auto options = context.options();
  tp->eps = noise.contiguous();
  tp->a = at::empty({T, B, H}, options), tp->raw_std = at::empty({T, B, n}, options);
  tp->z = at::empty({T, B, n}, options);
  Tensor mean = at::empty({T, B, n}, options), std_dev = at::empty({T, B, n}, options);
  const Tensor c = context.contiguous();
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "gssm_posterior_forward", [&] {
    gssm_forward_impl<scalar_t>(*tp, c.const_data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                                std_dev.data_ptr<scalar_t>(), min_std);
  });
  Named out;
  out["z"] = tp->z, out["mean"] = mean, out["std"] = std_dev;
  return {out, tp};
}

template <typename T>
static void gssm_backward_impl(const GSSMTape& tp, const T* g_z, const T* g_mean, const T* g_std, T* g_context,
                               const Tensors& g_weights) {
  const int64_t steps = tp.T, B = tp.B, n = tp.n, H = tp.H;
  const T *w_z = tp.weights[0].const_data_ptr<T>(), *w_o = tp.weights[1].const_data_ptr<T>(),
          *eps = tp.eps.const_data_ptr<T>(), *a = tp.a.const_data_ptr<T>(), *z = tp.z.const_data_ptr<T>();
  // ∂[μ, ρ] of every step (T, B, 2n), kept for W_o's and b_o's gradients; ∂c_t is the gradient of the pre-activation
  auto g_out = scratch<T>(steps * B * 2 * n), carry = scratch<T>(B * n);
  const Tensor slopes = softplus_slopes(tp.raw_std);
  const T* slope = slopes.const_data_ptr<T>();
  std::fill(carry.get(), carry.get() + B * n, T(0));
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t step = t * B * n;
    T* g_v = g_context + t * B * H;
    gaussian_head_backward(g_z + step, carry.get(), g_mean + step, g_std + step, eps + step, slope + step,
                           a + t * B * H, w_o, g_out.get() + t * B * 2 * n, g_v, B, H, n);
    if (t > 0) gemm<T>(false, B, n, H, g_v, H, w_z, n, T(0), carry.get(), n);
  }
  // ∂W_z = Σ_{t ≥ 1} (∂v_t)ᵀ z_{t-1}, ∂W_o = Σ_t (∂[μ, ρ]_t)ᵀ a_t, ∂b_o = Σ_t ∂[μ, ρ]_t
  T *gw_z = g_weights[0].data_ptr<T>(), *gw_o = g_weights[1].data_ptr<T>(), *gb_o = g_weights[2].data_ptr<T>();
  gemm<T>(true, H, n, (steps - 1) * B, g_context + B * H, H, z, n, T(0), gw_z, n);
  gemm<T>(true, 2 * n, H, steps * B, g_out.get(), 2 * n, a, H, T(0), gw_o, H);
  column_sums(g_out.get(), steps * B, 2 * n, gb_o);
}

// Backward: the gradients of {z, mean, std} (T, B, n); returns {context (T, B, H), weights in the tape's order}.
static Named gssm_posterior_backward(const std::shared_ptr<GSSMTape>& tp, const Tensor& g_z, const Tensor& g_mean,
                                     const Tensor& g_std) {
  NativeScope scope;
  const Tensor gz = g_z.contiguous(), gm = g_mean.contiguous(), gsd = g_std.contiguous();
  Tensor g_context = at::empty({tp->T, tp->B, tp->H}, gz.options());
  Tensors g_weights;
  for (const auto& w : tp->weights) g_weights.push_back(at::empty_like(w));
  AT_DISPATCH_FLOATING_TYPES(gz.scalar_type(), "gssm_posterior_backward", [&] {
    gssm_backward_impl<scalar_t>(*tp, gz.const_data_ptr<scalar_t>(), gm.const_data_ptr<scalar_t>(),
                                 gsd.const_data_ptr<scalar_t>(), g_context.data_ptr<scalar_t>(), g_weights);
  });
  Named out;
  out["context"] = g_context, out["weights"] = g_weights;
  return out;
}
