// Includes and aliases shared by every part of the extension.
#pragma once

#include <torch/extension.h>

#if defined(__linux__)
#include <dlfcn.h>
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

static Tensor symmetrize(const Tensor& M) { return (M + mT(M)).mul_(half_like(M)); }
