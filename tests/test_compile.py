"""`EKFModel(compile=True)`: the MLP kernels through `torch.compile` give the eager model's loss and gradients, with
the recursions in C++ (where the extension is built) and in Python; the batched passes run the compiled kernels."""
import pytest
import torch

from replay_overshooting.models import EKFModel
from replay_overshooting.objectives import sro, vro


def node_names(model, y, u):
    "The autograd node types of the filter recursion, the batched time update and the batched observation pass."
    filtered = model.filter(y, u)
    B, T, n = filtered.filtered_means.shape
    mean, cov = filtered.filtered_means.reshape(B * T, n), filtered.filtered_covs.reshape(B * T, n, n)
    time_update = model.dynamics.propagate_belief(mean, cov, u.reshape(B * T, -1), model.dynamics_cov())[0]
    observation = model.observation.value_and_jacobian(mean)[0]
    return [type(t.grad_fn).__name__ for t in (filtered.predicted_means, time_update, observation)]


def test_compiled_kernels_match_eager(backend):
    torch.manual_seed(0)
    eager = EKFModel(2, 2, 1, hidden=4, dynamics_layers=2, observation_layers=2).double()
    compiled = EKFModel(2, 2, 1, hidden=4, dynamics_layers=2, observation_layers=2, compile=True).double()
    compiled.load_state_dict(eager.state_dict())
    y, u = torch.randn(2, 4, 2, dtype=torch.float64), torch.randn(2, 4, 1, dtype=torch.float64)
    for objective in (vro, sro):
        results = []
        for model in (eager, compiled):
            loss, _ = objective(model, y, u, iteration=10**6)
            results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
        (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-10, atol=1e-12)
        for a, b in zip(compiled_grads, eager_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)

    filter_node, time_update_node, observation_node = node_names(compiled, y, u)
    if backend == "reference":  # no fused nodes at all: the recursions record ordinary autograd operations
        fused = {"_FilterBackward", "_NativeFilterBackward", "_ResidualTimeUpdateBackward", "_NativeTimeUpdateBackward",
                 "_MLPValueAndJacobianBackward", "_NativeMLPValueAndJacobianBackward"}
        for model in (compiled, eager):
            names = node_names(model, y, u)
            assert not fused & set(names), names
        return
    expected_filter = "_NativeFilterBackward" if backend == "native" else "_FilterBackward"
    assert filter_node == expected_filter
    assert (time_update_node, observation_node) == ("_ResidualTimeUpdateBackward", "_MLPValueAndJacobianBackward")
    if backend == "native":
        assert node_names(eager, y, u) == ["_NativeFilterBackward", "_NativeTimeUpdateBackward",
                               "_NativeMLPValueAndJacobianBackward"]
