// Includes and aliases shared by every part of the extension.
#pragma once

#include <torch/extension.h>
#include <ATen/ops/as_strided_native.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

using at::Tensor;
using Tensors = std::vector<Tensor>;
using Pairs = std::vector<std::pair<Tensor, Tensor>>;

enum Activation : int64_t { SOFTPLUS = 0, TANH = 1, RELU = 2 };

// Results handed to Python by name (a dict), so that neither side depends on the other's order. An undefined
// tensor becomes None.
using Named = pybind11::dict;

// Python's `.mT`, without the extra dispatch of the composite `Tensor::mT`.
static Tensor mT(const Tensor& M) { return M.transpose(-2, -1); }

// 0.5 as a tensor of M's type, made once: a Scalar would be wrapped, and converted, at every call.
static const Tensor& half_like(const Tensor& M) {
  thread_local Tensor* half = new Tensor();  // never freed: no destructor runs after libtorch's at exit
  if (!half->defined() || half->scalar_type() != M.scalar_type() || half->device() != M.device())
    *half = at::scalar_tensor(0.5, M.options());
  return *half;
}

// X[:, t], the step-t rows of a (B, T, ...) tensor, as a view made directly: through the dispatcher a `select`
// costs about a microsecond, and the recursions take a dozen a step (some 1,600 in a push DT-EKF iteration).
static Tensor step_of(const Tensor& X, int64_t t) {
  TORCH_CHECK(X.dim() >= 2 && t >= 0 && t < X.size(1), "step_of: no step ", t, " in a tensor of shape ", X.sizes());
  c10::SmallVector<int64_t, 6> sizes, strides;
  for (int64_t d = 0; d < X.dim(); ++d)
    if (d != 1) sizes.push_back(X.size(d)), strides.push_back(X.stride(d));
  return at::native::as_strided_tensorimpl(X, sizes, strides, X.storage_offset() + t * X.stride(1));
}

static Tensor symmetrize(const Tensor& M) { return (M + mT(M)).mul_(half_like(M)); }

// A tensor over memory of ours (a scratch buffer, a slice of the tape), for the ATen kernels that serve it.
template <typename T>
static Tensor wrap(const T* data, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return at::from_blob(const_cast<T*>(data), sizes, strides, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// Subnormal floats read and written as zero on this thread while one lives: x86's FTZ and DAZ bits of MXCSR, the
// previous mode restored when it goes (elsewhere it changes nothing). In training, adjoints of the Jacobian chain
// times slopes of saturated units fall below float32's 1.2e-38 (about 0.07 % of them in a push EKF after 100
// iterations), and each product that reads one takes the processor's slow microcode path: MKL's accumulating
// weight-gradient kernel ran at 14 GFLOP/s instead of some 100, and the iteration took up to 1.75× as long.
// Values that small are far below anything a loss resolves.
class FlushDenormals {
 public:
  FlushDenormals() {
#if defined(__x86_64__) || defined(_M_X64)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
#endif
  }
  ~FlushDenormals() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  unsigned saved_ = 0;
};

// What the entry points of the recursions and networks hold while they run: their ATen calls dispatched below
// autograd (each is the body of an autograd node of its own), with subnormals flushed.
struct NativeScope {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  FlushDenormals flush_denormals;
};
