"""`EKFModel(compile=True)`: the MLP kernels through `torch.compile` give the eager model's loss and gradients."""
import torch

from replay_overshooting.models import EKFModel
from replay_overshooting.objectives import sro, vro


def test_compiled_kernels_match_eager():
    torch.manual_seed(0)
    eager = EKFModel(2, 2, 1, hidden=4, layers=2).double()
    compiled = EKFModel(2, 2, 1, hidden=4, layers=2, compile=True).double()
    compiled.load_state_dict(eager.state_dict())
    y, u = torch.randn(2, 4, 2, dtype=torch.float64), torch.randn(2, 4, 1, dtype=torch.float64)
    for objective in (vro, sro):
        results = []
        for model in (eager, compiled):
            loss, _ = objective(model, y, u, iteration=10**6)
            results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
        (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-10, atol=1e-12)
        for a, b in zip(compiled_grads, eager_grads):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
