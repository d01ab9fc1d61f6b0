// The MLP's value and Jacobian, forward and backward (03a, 'The MLP's value and Jacobian').
#pragma once
#include "activation.h"
#include "gemm.h"

// Softplus is the identity above this input, as `models._SOFTPLUS_LINEAR_ABOVE` says: log(1 + e^a) - a = e^-40 is
// below double's resolution there, so the value and its slope sigmoid(a) stay consistent.
constexpr double kSoftplusLinearAbove = 40;

// An MLP's weights as the kernels use them, once per recursion: contiguous, softplus's β folded in (units
// softplus(a') of a' = β a: W'_1 = β W_1, b'_ℓ = β b_ℓ for ℓ < L, W'_L = W_L / β), and the Jacobian's plan: its
// rows carried down from the output (reverse, k = out rows) or up from the first `wrt` inputs (k = wrt rows),
// whichever side is smaller.
struct Layers {
  Tensors weights, biases;         // W_ℓ (o_ℓ, i_ℓ), b_ℓ (o_ℓ), ℓ = 1..L at indices 0..L-1
  Tensors transposed;              // W_ℓᵀ (i_ℓ, o_ℓ): products by W_ℓᵀ read it with contiguous rows (`gemm`)
  Tensor first;                    // the chain's first rows (k, H): W_L (reverse) or W_1[:, :wrt]ᵀ
  std::vector<int64_t> widths;     // i_1, o_1, ..., o_L
  int64_t wrt, rows, activation;   // rows: k
  bool reverse;
  double fold;
};

// `t · factor`, or `t / factor` with `divide`, as a new contiguous tensor, in a plain loop: a product of an ATen
// tensor with a double converts the scalar and dispatches, which at these sizes costs more than the arithmetic
// and, in the continuous-time model, is paid at every evaluation of the field. Same rounding as ATen's.
static Tensor scaled(const Tensor& t, double factor, bool divide = false) {
  Tensor source = t.contiguous(), out = at::empty_like(source);
  AT_DISPATCH_FLOATING_TYPES(source.scalar_type(), "scaled", [&] {
    const scalar_t* in = source.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t f = static_cast<scalar_t>(factor);
    const int64_t size = source.numel();
    if (divide) for (int64_t i = 0; i < size; ++i) o[i] = in[i] / f;
    else for (int64_t i = 0; i < size; ++i) o[i] = in[i] * f;
  });
  return out;
}

static Layers make_layers(const Tensors& params, int64_t activation, double beta, int64_t wrt) {
  Layers L;
  const size_t count = params.size() / 2;
  for (size_t i = 0; i < count; ++i) {
    L.weights.push_back(params[2 * i].contiguous());
    L.biases.push_back(params[2 * i + 1].contiguous());
  }
  L.activation = activation;
  L.fold = activation == SOFTPLUS ? beta : 1.0;
  if (L.fold != 1.0) {
    L.weights[0] = scaled(L.weights[0], L.fold);
    L.weights[count - 1] = scaled(L.weights[count - 1], L.fold, true);
    for (size_t i = 0; i + 1 < count; ++i) L.biases[i] = scaled(L.biases[i], L.fold);
  }
  L.widths.push_back(L.weights[0].size(1));
  for (const auto& W : L.weights) L.widths.push_back(W.size(0));
  L.wrt = wrt;
  L.reverse = L.widths.back() <= wrt;
  L.rows = L.reverse ? L.widths.back() : wrt;
  L.first = L.reverse ? L.weights.back() : L.weights[0].slice(1, 0, wrt).t().contiguous();
  for (const auto& W : L.weights) L.transposed.push_back(W.t().contiguous());
  return L;
}

// What the backward of one forward needs, in one buffer: the input x and hidden units h_ℓ (B, o_ℓ), their
// slopes d_ℓ, and the Jacobian chain's rows before each slope, (B, k, H) (the first `before` is the chain's first
// rows (k, H), shared by the batch). The rows after a slope, before ⊙ d, are not kept: the backward recomputes
// them block by block in cache. Kept, they doubled what a recursion writes to memory and reads back (16 kB per
// batch element of the push dynamics, some 38 MB an iteration), and the loops that wrote them ran at the
// memory's pace.
struct MLPSaved {
  Tensor buffer;
  int64_t batch = 0;
  std::vector<int64_t> h, d, before;  // offsets; h[0] is x, d[i] belongs to h[i] (d[0] unused)
};

// The hidden layer whose slope the chain's j-th step multiplies by; the step then multiplies with W_hidden
// (reverse, index hidden − 1) or W_hidden+1ᵀ (index hidden).
static size_t chain_hidden(const Layers& L, size_t j) { return L.reverse ? L.weights.size() - 1 - j : j + 1; }

template <typename T>
static void activate(T* a, T* h, int64_t size, int64_t activation) {  // a becomes the slope
  if (activation == SOFTPLUS) {
    softplus_and_slope(a, h, size, T(kSoftplusLinearAbove));
  } else if (activation == TANH) {
    Tensor value = wrap(h, {size}, {1});
    at::tanh_out(value, wrap(a, {size}, {1}));
    for (int64_t i = 0; i < size; ++i) a[i] = T(1) - h[i] * h[i];
  } else {
    for (int64_t i = 0; i < size; ++i) h[i] = a[i] > 0 ? a[i] : T(0), a[i] = a[i] > 0 ? T(1) : T(0);
  }
}

// `(softplus(a), sigmoid(a))` of a contiguous float tensor, as the networks' forward computes them (for tests).
static std::pair<Tensor, Tensor> softplus_with_slope(const Tensor& a_in) {
  NativeScope scope;
  Tensor slope = a_in.contiguous().clone(), value = at::empty_like(slope);
  AT_DISPATCH_FLOATING_TYPES(slope.scalar_type(), "softplus_with_slope", [&] {
    softplus_and_slope(slope.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), slope.numel(),
                       static_cast<scalar_t>(kSoftplusLinearAbove));
  });
  return {value, slope};
}

// A (B, k) matrix whose rows are contiguous, whatever its row stride (copied to be so if they are not).
static Tensor inner_rows(const Tensor& X) { return X.size(1) <= 1 || X.stride(1) == 1 ? X : X.contiguous(); }

template <typename T>
static std::unique_ptr<T[]> scratch(int64_t size) { return std::unique_ptr<T[]>(new T[size]); }  // uninitialised

// Scratch memory of the network passes, kept by each thread from call to call: a push iteration makes some 300
// passes, and allocating their buffers afresh each time cost several percent of it in malloc and free. `Slot`
// names what a buffer holds, so that no two live buffers share one; the contents are not initialised.
// `slope_grads` comes last: it takes one buffer per hidden layer from there on (`index`).
enum class Slot : size_t {
  forward_after, forward_transposed, chain_grad, chain_grad_product, backward_after, value_grad, hidden_grad, slope_grads
};

template <typename T>
static T* reusable(Slot slot, int64_t size, size_t index = 0) {
  thread_local std::vector<std::vector<T>> buffers;
  const size_t at = static_cast<size_t>(slot) + index;
  if (buffers.size() <= at) buffers.resize(at + 1);
  if (static_cast<int64_t>(buffers[at].size()) < size) buffers[at].resize(size);
  return buffers[at].data();
}

// Batch elements per block of the Jacobian chain: its rows (k per element) times the widest layer stay within
// some 64 kB, so that each block's products and slopes work in the core's cache. At 784 elements (the smoother's
// one-step priors of a push batch) the chain's (k·B, H) buffers are 1.6 MB each, and whole-batch passes ran at
// the memory's pace.
static int64_t chain_block(const Layers& L, int64_t widest) {
  return std::max<int64_t>(1, (16384 / std::max<int64_t>(1, L.rows * widest)));
}

static int64_t widest_layer(const Layers& L) {
  int64_t widest = std::max(L.wrt, L.widths.back());
  for (size_t i = 1; i + 1 < L.widths.size(); ++i) widest = std::max(widest, L.widths[i]);
  return widest;
}

// Row r of batch element bb of the chain's j-th rows before their slope, H wide: in the tape (`base`, its buffer),
// or for j = 0 the chain's first rows (`first`, k × H), which the batch shares.
template <typename T>
static inline const T* chain_before_row(const MLPSaved& s, const T* base, const T* first, size_t j, int64_t k,
                                        int64_t bb, int64_t r, int64_t H) {
  return j ? base + s.before[j] + (bb * k + r) * H : first + r * H;
}

// The chain's j-th rows after their slope, before ⊙ d, of batch elements b0..b1 (the block's rows, (b1 − b0, k, H))
// into `after`.
template <typename T>
static void chain_after_slope(const Layers& L, const MLPSaved& s, size_t j, int64_t b0, int64_t b1, T* after) {
  const int64_t k = L.rows, H = L.widths[chain_hidden(L, j)];
  const T *base = s.buffer.const_data_ptr<T>(), *first = L.first.const_data_ptr<T>();
  const T* d = base + s.d[chain_hidden(L, j)];
  for (int64_t bb = b0; bb < b1; ++bb)
    for (int64_t r = 0; r < k; ++r) {
      const T* y = chain_before_row(s, base, first, j, k, bb, r, H);
      const T* dd = d + bb * H;
      T* o = after + ((bb - b0) * k + r) * H;
      for (int64_t u = 0; u < H; ++u) o[u] = y[u] * dd[u];
    }
}

// The input rows [x_b, u_b] (u undefined: x alone) into `h0` (B, i_1). The rows may be strided (a step's controls
// u[:, t] of a (B, T, m) window are): copied row by row, without a contiguous copy first.
template <typename T>
static void gather_input(const Tensor& x_in, const Tensor& u_in, T* h0) {
  Tensor x = inner_rows(x_in), u = u_in.defined() ? inner_rows(u_in) : Tensor();
  const int64_t B = x.size(0), nx = x.size(1), nu = u.defined() ? u.size(1) : 0;
  const T *xp = x.const_data_ptr<T>(), *up = nu ? u.const_data_ptr<T>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    std::copy(xp + b * x.stride(0), xp + b * x.stride(0) + nx, h0 + b * (nx + nu));
    if (nu) std::copy(up + b * u.stride(0), up + b * u.stride(0) + nu, h0 + b * (nx + nu) + nx);
  }
}

// `out` (B, o) and `J` (B, o, wrt) are written element by element `out_stride` and `J_stride` apart: rows of
// (B, T, ...) tensors that a recursion fills step by step, or contiguous outputs.
template <typename T>
static void mlp_forward_impl(const Tensor& x_in, const Tensor& u_in, const Tensor& residual_in, const Layers& L,
                             MLPSaved& s, T* out, int64_t out_stride, T* J, int64_t J_stride) {
  const int64_t B = x_in.size(0), count = L.weights.size(), k = L.rows, wrt = L.wrt;
  const auto& w = L.widths;
  s.batch = B;
  int64_t size = 0;
  auto take = [&](int64_t n) { int64_t at = size; size += n; return at; };
  s.h.assign(count, 0), s.d.assign(count, 0);
  for (int64_t i = 0; i < count; ++i) s.h[i] = take(B * w[i]), s.d[i] = i ? take(B * w[i]) : 0;
  for (int64_t j = 0; j + 1 < count; ++j) s.before.push_back(j ? take(k * B * w[chain_hidden(L, j)]) : 0);
  s.buffer = at::empty({size}, x_in.options());
  T* base = s.buffer.data_ptr<T>();
  gather_input(x_in, u_in, base + s.h[0]);
  for (int64_t i = 0; i + 1 < count; ++i) {  // a = h W_ℓᵀ + b, then h_ℓ = σ(a), d_ℓ = σ'(a)
    T *a = base + s.d[i + 1], *h = base + s.h[i + 1];
    const T* b = L.biases[i].const_data_ptr<T>();
    for (int64_t r = 0; r < B; ++r) std::copy(b, b + w[i + 1], a + r * w[i + 1]);
    gemm<T>(false, B, w[i + 1], w[i], base + s.h[i], w[i], L.transposed[i].const_data_ptr<T>(), w[i + 1],
            T(1), a, w[i + 1]);
    activate(a, h, B * w[i + 1], L.activation);
  }
  const T* b = L.biases.back().const_data_ptr<T>();
  for (int64_t r = 0; r < B; ++r) std::copy(b, b + w[count], out + r * out_stride);
  if (residual_in.defined()) {  // out = residual + the network
    Tensor residual = inner_rows(residual_in);
    const T* res = residual.const_data_ptr<T>();
    for (int64_t r = 0; r < B; ++r)
      for (int64_t o = 0; o < w[count]; ++o) out[r * out_stride + o] += res[r * residual.stride(0) + o];
  }
  gemm<T>(false, B, w[count], w[count - 1], base + s.h[count - 1], w[count - 1],
          L.transposed.back().const_data_ptr<T>(), w[count], T(1), out, out_stride);
  // The chain, rows (B, k, H): after = before ⊙ d (d broadcast over the k rows of an element), then the next
  // before = after · M; the last product gives the rows of J (reverse: J itself, (B, out, wrt)) or of Jᵀ.
  const int64_t last_width = L.reverse ? wrt : w[count], widest = widest_layer(L), block = chain_block(L, widest);
  // The last product's rows: J's own rows when its elements lie k·wrt apart (reverse), else a block's rows first.
  const bool direct = L.reverse && J_stride == k * wrt;
  T* transposed = direct ? nullptr : reusable<T>(Slot::forward_transposed, std::min(block, B) * k * last_width);
  T* after = reusable<T>(Slot::forward_after, std::min(block, B) * k * widest);
  for (int64_t b0 = 0; b0 < B; b0 += block) {
    const int64_t b1 = std::min(B, b0 + block), rows = (b1 - b0) * k;
    for (int64_t j = 0; j + 1 < count; ++j) {
      const size_t hidden = chain_hidden(L, j);
      const int64_t H = w[hidden];
      chain_after_slope(L, s, j, b0, b1, after);
      const bool final = j + 2 == count;
      // rows of J (reverse): · W_ℓ (H, i_ℓ), only its first `wrt` columns at the input layer; rows of Jᵀ: · W_ℓ+1ᵀ
      const T* M = L.reverse ? L.weights[hidden - 1].const_data_ptr<T>() : L.transposed[hidden].const_data_ptr<T>();
      const int64_t width = final ? last_width : L.reverse ? w[hidden - 1] : w[hidden + 1];
      T* next = !final ? base + s.before[j + 1] + b0 * k * width : direct ? J + b0 * J_stride : transposed;
      gemm<T>(false, rows, width, H, after, H, M, L.reverse ? w[hidden - 1] : width, T(0), next, width);
    }
    if (L.reverse && !direct)  // J[b] = the rows of element b
      for (int64_t bb = b0; bb < b1; ++bb)
        std::copy(transposed + (bb - b0) * k * wrt, transposed + (bb - b0 + 1) * k * wrt, J + bb * J_stride);
    if (!L.reverse)  // J[b, o, c] = Jᵀ rows[b, c, o]
      for (int64_t bb = b0; bb < b1; ++bb)
        for (int64_t c = 0; c < k; ++c)
          for (int64_t o = 0; o < last_width; ++o)
            J[bb * J_stride + o * wrt + c] = transposed[((bb - b0) * k + c) * last_width + o];
  }
}

// `mlp_forward` into given `out (B, o)` and `J (B, o, wrt)`, each contiguous within an element (the step's rows of
// a recursion's outputs: `(B, T, ...)` tensors selected at a step).
static void mlp_forward_into(const Tensor& x, const Layers& L, MLPSaved& s, const Tensor& u, const Tensor& residual,
                             const Tensor& out, const Tensor& J) {
  TORCH_CHECK(out.stride(-1) == 1 && J.stride(-1) == 1 && J.stride(-2) == L.wrt, "mlp_forward_into: outputs split");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_forward", [&] {
    mlp_forward_impl<scalar_t>(x, u, residual, L, s, out.data_ptr<scalar_t>(), out.stride(0),
                               J.data_ptr<scalar_t>(), J.stride(0));
  });
}

// `(out (B, o), J (B, o, wrt))` of the input `[x, u] (B, i)` (`u` undefined: `x` alone), saving what the backward
// needs in `s`; with a `residual (B, o)`, `out` is residual + the network's output. (Gathering the input and adding
// the residual here saves the time update two ATen calls and tensors a step.)
static std::pair<Tensor, Tensor> mlp_forward(const Tensor& x, const Layers& L, MLPSaved& s, const Tensor& u = Tensor(),
                                             const Tensor& residual = Tensor()) {
  const int64_t B = x.size(0), out_dim = L.widths.back();
  Tensor out = at::empty({B, out_dim}, x.options()), J = at::empty({B, out_dim, L.wrt}, x.options());
  mlp_forward_into(x, L, s, u, residual, out, J);
  return {out, J};
}

// An MLP's weight gradients summed over the steps of a recursion, in folded form until `result`: each step's
// backward adds its products straight into them.
struct WeightGradients {
  const Layers* layers;
  Tensors W, b;  // ∂ℓ/∂W'_ℓ, ∂ℓ/∂b'_ℓ
  bool added = false;

  template <typename T>
  std::pair<T*, T*> slots(int64_t index) {
    if (W.empty())
      for (size_t i = 0; i < layers->weights.size(); ++i)
        W.push_back(at::zeros_like(layers->weights[i])), b.push_back(at::zeros_like(layers->biases[i]));
    added = true;
    return {W[index].data_ptr<T>(), b[index].data_ptr<T>()};
  }
  Tensors result() {  // `[W_1, b_1, ..., W_L, b_L]`; undefined (None) when no step was added
    const size_t count = layers->weights.size();
    Tensors grads(2 * count);
    if (!added) return grads;
    const double fold = layers->fold;
    for (size_t k = 0; k < count; ++k) {  // ∂ℓ/∂W_1 = β ∂ℓ/∂W'_1, ∂ℓ/∂b_ℓ = β ∂ℓ/∂b'_ℓ (ℓ < L), ∂ℓ/∂W_L = ∂ℓ/∂W'_L / β
      grads[2 * k] = fold == 1.0 ? W[k] : k == 0 ? scaled(W[k], fold) : k + 1 == count ? scaled(W[k], fold, true) : W[k];
      grads[2 * k + 1] = fold == 1.0 || k + 1 == count ? b[k] : scaled(b[k], fold);
    }
    return grads;
  }
};

template <typename T>
static void mlp_backward_impl(const MLPSaved& s, const Layers& L, const T* grad_out, const T* grad_J,
                              WeightGradients& totals, T* grad_x) {
  const int64_t B = s.batch, count = L.weights.size(), k = L.rows, wrt = L.wrt;
  const auto& w = L.widths;
  const T* base = s.buffer.const_data_ptr<T>();
  const int64_t widest = widest_layer(L), block = std::min(B, chain_block(L, widest));
  T* G = reusable<T>(Slot::chain_grad, block * k * widest);
  T* GM = reusable<T>(Slot::chain_grad_product, block * k * widest);
  T* after = reusable<T>(Slot::backward_after, block * k * widest);
  const T* first = L.first.const_data_ptr<T>();
  std::vector<T*> slope_grads(count);
  for (int64_t i = 1; i < count; ++i) slope_grads[i] = reusable<T>(Slot::slope_grads, B * w[i], i);
  // The chain, back down block by block: ∂ℓ/∂(the rows after the last product), (B, k, width), is ∂J (reverse)
  // or its transpose.
  T* first_total = totals.slots<T>(L.reverse ? count - 1 : 0).first;
  for (int64_t b0 = 0; b0 < B; b0 += block) {
    const int64_t b1 = std::min(B, b0 + block), rows = (b1 - b0) * k;
    int64_t width = L.reverse ? wrt : w[count];
    const T* grad_rows = grad_J + b0 * k * wrt;
    if (!L.reverse) {
      for (int64_t bb = b0; bb < b1; ++bb)
        for (int64_t c = 0; c < k; ++c)
          for (int64_t o = 0; o < width; ++o)
            G[((bb - b0) * k + c) * width + o] = grad_J[(bb * width + o) * wrt + c];
      grad_rows = G;
    }
    for (int64_t j = count - 2; j >= 0; --j) {
      const size_t hidden = chain_hidden(L, j);
      const int64_t H = w[hidden];
      chain_after_slope(L, s, j, b0, b1, after);
      if (L.reverse) {  // the step was after · W[:, :width]: ∂W += afterᵀ G, ∂after = G W[:, :width]ᵀ
        const size_t layer = hidden - 1;
        gemm<T>(true, H, width, rows, after, H, grad_rows, width, T(1), totals.slots<T>(layer).first,
                w[layer]);
        gemm<T>(false, rows, H, width, grad_rows, width, L.transposed[layer].const_data_ptr<T>(), H, T(0),
                GM, H);
      } else {  // the step was after · W_ℓ+1ᵀ: ∂W_ℓ+1 += Gᵀ after, ∂after = G W_ℓ+1
        gemm<T>(true, width, H, rows, grad_rows, width, after, H, T(1), totals.slots<T>(hidden).first, H);
        gemm<T>(false, rows, H, width, grad_rows, width, L.weights[hidden].const_data_ptr<T>(), H, T(0),
                GM, H);
      }
      // through the slope: ∂d += Σ_k ∂after ⊙ before, ∂before = ∂after ⊙ d
      const T* d = base + s.d[hidden];
      T* sg = slope_grads[hidden];
      for (int64_t bb = b0; bb < b1; ++bb) {
        T* acc = sg + bb * H;
        std::fill(acc, acc + H, T(0));
        for (int64_t r = 0; r < k; ++r) {
          const int64_t row = (bb - b0) * k + r;
          const T* g = GM + row * H;
          const T* y = chain_before_row(s, base, first, j, k, bb, r, H);
          const T* dd = d + bb * H;
          T* o = G + row * H;
          for (int64_t u = 0; u < H; ++u) acc[u] += g[u] * y[u], o[u] = g[u] * dd[u];
        }
      }
      grad_rows = G, width = H;
    }
    for (int64_t row = 0; row < rows; ++row) {  // the chain's first rows: W_L (reverse) or W_1[:, :wrt]ᵀ
      const int64_t r = row % k;
      const T* g = G + row * width;
      for (int64_t u = 0; u < width; ++u) {
        if (L.reverse) first_total[r * width + u] += g[u]; else first_total[u * w[0] + r] += g[u];
      }
    }
  }
  // the value pass: ∂a_L = ∂out; ∂h_ℓ = ∂a_ℓ+1 W_ℓ+1; ∂a_ℓ = ∂h_ℓ ⊙ d_ℓ + ∂d_ℓ ⊙ σ''(a_ℓ)
  T* grad_a = reusable<T>(Slot::value_grad, B * std::max(widest, w[0]));
  T* grad_h = reusable<T>(Slot::hidden_grad, B * std::max(widest, w[0]));
  std::copy(grad_out, grad_out + B * w[count], grad_a);
  for (int64_t i = count - 1; i >= 0; --i) {
    const int64_t o = w[i + 1], H = w[i];
    auto [Wt, bt] = totals.slots<T>(i);
    gemm<T>(true, o, H, B, grad_a, o, base + s.h[i], H, T(1), Wt, H);
    for (int64_t bb = 0; bb < B; ++bb)
      for (int64_t u = 0; u < o; ++u) bt[u] += grad_a[bb * o + u];
    if (i == 0) {
      gemm<T>(false, B, H, o, grad_a, o, L.weights[0].const_data_ptr<T>(), H, T(0), grad_x, H);
      break;
    }
    gemm<T>(false, B, H, o, grad_a, o, L.weights[i].const_data_ptr<T>(), H, T(0), grad_h, H);
    const T *d = base + s.d[i], *h = base + s.h[i], *sg = slope_grads[i];
    for (int64_t e = 0; e < B * H; ++e) {
      const T curvature = L.activation == SOFTPLUS ? d[e] * (T(1) - d[e]) : L.activation == TANH ? T(-2) * h[e] * d[e] : T(0);
      grad_a[e] = grad_h[e] * d[e] + sg[e] * curvature;
    }
  }
}

// ∂ℓ/∂x of one forward, adding its weight gradients to `totals`; undefined gradients count as zeros.
static Tensor mlp_backward_to_input(const MLPSaved& s, const Layers& L, const Tensor& grad_out_in,
                                    const Tensor& grad_J_in, WeightGradients& totals) {
  const int64_t B = s.batch, out_dim = L.widths.back();
  Tensor grad_out = grad_out_in.defined() ? grad_out_in.contiguous() : at::zeros({B, out_dim}, s.buffer.options());
  Tensor grad_J = grad_J_in.defined() ? grad_J_in.contiguous() : at::zeros({B, out_dim, L.wrt}, s.buffer.options());
  Tensor grad_x = at::empty({B, L.widths[0]}, s.buffer.options());
  AT_DISPATCH_FLOATING_TYPES(grad_x.scalar_type(), "mlp_backward", [&] {
    mlp_backward_impl<scalar_t>(s, L, grad_out.const_data_ptr<scalar_t>(), grad_J.const_data_ptr<scalar_t>(), totals,
                                grad_x.data_ptr<scalar_t>());
  });
  return grad_x;
}

// One value-and-Jacobian pass as an autograd node of its own (`MLP.value_and_jacobian` on CPU): the forward
// keeps its `MLPTape` for the backward.
struct MLPTape {
  Layers layers;
  MLPSaved saved;
};

static std::tuple<Tensor, Tensor, std::shared_ptr<MLPTape>> value_and_jacobian_forward(
    const Tensor& x, const Tensors& params, int64_t activation, double beta, int64_t wrt) {
  NativeScope scope;
  auto tape = std::make_shared<MLPTape>();
  tape->layers = make_layers(params, activation, beta, wrt);
  auto [out, J] = mlp_forward(x, tape->layers, tape->saved);
  return {out, J, tape};
}

// The gradients of the network's input `x` and its `weights` (in `MLP.parameter_list` order), by name.
static Named value_and_jacobian_backward(const MLPTape& tape, const Tensor& grad_out, const Tensor& grad_J) {
  NativeScope scope;
  WeightGradients weight_grads{&tape.layers};
  Named out;
  out["x"] = mlp_backward_to_input(tape.saved, tape.layers, grad_out, grad_J, weight_grads);
  out["weights"] = weight_grads.result();
  return out;
}
