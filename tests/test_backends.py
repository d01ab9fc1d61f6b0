"""Every backend gives the reference path's losses and gradients, for every objective and kind of dynamics.

The reference path (`backend="reference"`) is the plain one-step functions of `01_ekf` and `03_models`,
differentiated by autograd; the fused nodes and the C++ loops are hand-written rewrites of it."""
import pytest
import torch

from replay_overshooting import backends
from replay_overshooting.backends import BackendUnavailableError
from replay_overshooting.image_models import ImageEKFModel
from replay_overshooting.models import EKFModel
from replay_overshooting.native import native_loops
from replay_overshooting.objectives import get_objective

FAST = ["fused", pytest.param("native", marks=pytest.mark.skipif(native_loops() is None, reason="no C++ build here"))]
DYNAMICS = {
    "discrete": {},
    "ensemble": dict(dynamics="ensemble", ensemble_size=4),
    "continuous": dict(dynamics="continuous", dt=0.1, ode_method="rk4", ode_options={"step_size": 0.05}),
}


def loss_and_grads(model, objective, y, u, mask, backend):
    "The objective's loss `()` at an iteration past every ramp, and its gradients with respect to every parameter."
    model.backend = backend
    loss, _ = get_objective(objective)(model, y, u, mask, iteration=10_000, alpha=0.5)
    return loss.detach(), torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def assert_same(got, expected):
    "Equal to round-off in float64: losses to 1e-10, gradients to 1e-8 of their largest entry (they sum many steps)."
    (loss, grads), (ref_loss, ref_grads) = got, expected
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-8, atol=1e-8 * ref.abs().max().item())


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dynamics", sorted(DYNAMICS))
@pytest.mark.parametrize("objective", ["vro", "sro", "lro", "none", "s_ekf"])
def test_every_backend_gives_the_reference_loss_and_gradients(backend, dynamics, objective):
    torch.manual_seed(0)
    model = EKFModel(3, 2, 1, hidden=8, dynamics_layers=2, observation_layers=2, noise="factor_diagonal",
                     init="kaiming_fan_out", **DYNAMICS[dynamics]).double()
    y, u = torch.randn(4, 7, 2, dtype=torch.float64), torch.randn(4, 7, 1, dtype=torch.float64)
    mask = torch.rand(4, 7) > 0.2
    assert_same(loss_and_grads(model, objective, y, u, mask, backend),
                loss_and_grads(model, objective, y, u, mask, "reference"))


@pytest.mark.parametrize("backend", FAST)
def test_the_image_ekf_gives_the_reference_loss_and_gradients(backend):
    torch.manual_seed(0)
    model = ImageEKFModel(image_size=16, ctrl_dim=1, latent_dim=3, obs_dim=2).double()
    frames = torch.rand(2, 5, 16, 16, dtype=torch.float64)
    u = torch.randn(2, 5, 1, dtype=torch.float64)
    results = []
    for name in (backend, "reference"):
        model.ekf.backend = name
        torch.manual_seed(1)  # the loss scores one sample of the encoder
        loss, _ = model.loss(frames, u, iteration=10_000)
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    assert_same(*results)


def test_a_backend_that_cannot_run_says_why():
    "An explicit `native` where the C++ loops are not built is an error that says so; `auto` falls back to fused."
    model = EKFModel(2, 2, hidden=4, dynamics_layers=1, observation_layers=1, backend="native")
    y = torch.randn(1, 3, 2)
    registered = backends._native_loader
    backends.register_native(lambda: None)  # as where the build failed
    try:
        with pytest.raises(BackendUnavailableError, match="not built here"):
            model.filter(y)
        model.backend = "auto"
        assert type(model.filter(y).predicted_means.grad_fn).__name__ == "_FilterBackward"
    finally:
        backends.register_native(registered)
    with pytest.raises(ValueError, match="backend must be one of"):
        EKFModel(2, 2, backend="cpp")
