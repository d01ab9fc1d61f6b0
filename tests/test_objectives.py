"""The objectives against a naive computation, their schedules, and short training runs."""
import math

import pytest
import torch

from naive import naive_objective_terms
from replay_overshooting.models import MLP, EKFModel
from replay_overshooting.objectives import OBJECTIVES, get_objective, no_overshooting, ramp, s_ekf, sro, vro


pytestmark = pytest.mark.usefixtures("backend")  # every test with each backend: C++ loops, fused nodes, reference


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = EKFModel(2, 2, 1, hidden=6, dynamics_layers=2, observation_layers=2, noise="full").double()
    with torch.no_grad():  # move the noise away from its initial value so every matrix matters
        for p in (model.initial_mean, model.initial_cov.lower, model.dynamics_cov.lower, model.obs_cov.lower):
            p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    u = torch.randn(3, 5, 1, generator=g, dtype=torch.float64)
    return model, y, u, naive_objective_terms(model, y, u)


@pytest.mark.parametrize("iteration", [0, 37, 5000])
@pytest.mark.parametrize("alpha, beta", [(0.5, 1.0), (0.3, 2.0)])
def test_objectives_equal_naive_computation(tiny, iteration, alpha, beta):
    model, y, u, t = tiny
    hyper = dict(alpha=alpha, beta=beta, burn_in=100, kl_anneal=1000)
    w_r, w_kl = min(1, iteration / 100), min(1, iteration / 1000)
    expected = {
        "vro": -(alpha * t["smooth"].mean() + (1 - alpha) * w_r * t["replay"].mean()) + beta * w_kl * t["kl"].mean(),
        "lro": -(alpha * t["smooth"].mean() + (1 - alpha) * w_r * t["latent_replay"].mean())
        + beta * w_kl * t["kl"].mean(),
        "none": -t["smooth"].mean() + beta * w_kl * t["kl"].mean(),
        "sro": -(alpha * t["one_step"].mean() + (1 - alpha) * w_r * t["replay"].mean()),
        "s_ekf": -t["one_step"].mean(),
    }
    for name, value in expected.items():
        loss, parts = get_objective(name)(model, y, u, iteration=iteration, **hyper)
        torch.testing.assert_close(loss, value, atol=1e-9, rtol=0, msg=f"objective {name}")
        assert all(not v.requires_grad for v in parts.values())


def test_masked_steps_are_left_out(tiny):
    model, y, u, t = tiny
    mask = torch.ones(y.shape[:2], dtype=torch.bool)
    mask[0, 2] = mask[2, 4] = False
    y_nan = y.clone()
    y_nan[~mask] = float("nan")
    loss, parts = sro(model, y_nan, u, mask, alpha=1.0)
    assert torch.isfinite(loss)
    # with a missing step the filter differs from the full one, so compare against the mask-aware average
    # of the filter's own one-step terms
    filtered = model.filter(y_nan, u, mask)
    torch.testing.assert_close(parts["one_step_log_lik"], filtered.log_likelihoods[mask].mean())
    loss, _ = vro(model, y_nan, u, mask, iteration=10_000)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_alpha_one_is_exactly_no_replay(tiny):
    model, y, u, _ = tiny
    for it in (0, 50, 10_000):
        assert vro(model, y, u, iteration=it, alpha=1.0)[0] == no_overshooting(model, y, u, iteration=it)[0]
        assert sro(model, y, u, iteration=it, alpha=1.0)[0] == s_ekf(model, y, u, iteration=it)[0]


def test_schedules_match_spec():
    burn_in = 100
    assert [ramp(i, burn_in) for i in (0, burn_in // 2, burn_in, 10 * burn_in)] == [0.0, 0.5, 1.0, 1.0]


def test_unknown_objective_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown objective 'elbo'; choose one of"):
        get_objective("elbo")
    assert set(OBJECTIVES) == {"vro", "sro", "lro", "none", "s_ekf"}


def test_ensemble_predictions_depend_on_controls():
    torch.manual_seed(0)
    model = EKFModel(3, 2, 2, dynamics="ensemble", ensemble_size=5, hidden=8).double()
    y = torch.randn(2, 6, 2, dtype=torch.float64)
    u = torch.randn(2, 16, 2, dtype=torch.float64)
    a = model.forecast(y, u, predict_steps=10, num_samples=0)
    b = model.forecast(y, u * 2, predict_steps=10, num_samples=0)
    assert (a.mean - b.mean).abs().max() > 1e-3


def van_der_pol(num, steps, dt=0.1, seed=0):
    "Van der Pol (mu = 1) by Euler-Maruyama with 10 substeps, process noise 0.05 I, observation noise 1e-4 I."
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(num, 2, generator=g)
    states = [x]
    h = dt / 10
    for _ in range(steps - 1):
        for _ in range(10):
            drift = torch.stack([x[:, 0] - x[:, 0] ** 3 / 3 - x[:, 1], x[:, 0]], -1)
            x = x + drift * h + math.sqrt(0.05 * h) * torch.randn(num, 2, generator=g)
        states.append(x)
    states = torch.stack(states, 1)
    return states + 1e-2 * torch.randn(states.shape, generator=g)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_training_on_van_der_pol_learns_to_predict(name):
    torch.manual_seed(0)
    train, test = van_der_pol(64, 25, seed=0), van_der_pol(32, 25, seed=1)
    model = EKFModel(2, 2, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    objective = get_objective(name)
    losses = []
    for it in range(250):
        batch = train[torch.randint(0, 64, (16,))]
        start = torch.randint(0, 25 - 15, ()).item()
        loss, _ = objective(model, batch[:, start:start + 15], iteration=it, alpha=0.5, burn_in=50, kl_anneal=100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 1.0, f"{name}: loss did not fall"
    with torch.no_grad():
        forecast = model.forecast(test[:, :5], predict_steps=20, num_samples=0)
    model_mae = (forecast.mean - test[:, 5:]).abs().mean()
    last_observation_mae = (test[:, 4:5] - test[:, 5:]).abs().mean()
    assert model_mae < 0.7 * last_observation_mae, f"{name}: {model_mae:.3f} vs hold-last {last_observation_mae:.3f}"


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_gradients_stay_finite_with_push_hyperparameters(name):
    "200 iterations, float32, push sizes, lr 5e-3 x 0.9^(i//100), clip 100; windows grow 2 -> 50 (ramp 4, faster than the paper's 200)."
    torch.manual_seed(0)
    model = EKFModel(8, 2, 6)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    y, u = torch.randn(16, 50, 2), torch.randn(16, 50, 6)
    for it in range(200):
        length = min(it // 4 + 2, 50)
        start = torch.randint(0, 50 - length + 1, ()).item()
        for group in opt.param_groups:
            group["lr"] = max(5e-3 * 0.9 ** (it // 100), 1e-6)
        loss, _ = get_objective(name)(model, y[:, start:start + length], u[:, start:start + length], iteration=it,
                                      alpha=0.5, beta=1.0, burn_in=100, kl_anneal=1000)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads), f"{name}: iteration {it}"
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()


def test_gradcheck_fused_mlp_and_time_update():
    "The hand-written backwards of the MLP value-and-Jacobian and the residual time update, by finite differences."
    from replay_overshooting.models import _MLPValueAndJacobian, _ResidualTimeUpdate
    torch.manual_seed(0)
    for activation in ("softplus", "tanh"):
        for out_dim in (2, 6):  # carried from the output side, and from the input side
            net = MLP(4, out_dim, hidden=5, layers=2, activation=activation).double()
            params = [p.detach().clone().requires_grad_() for p in net.parameter_list()]
            x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
            fn = lambda x, *ps: _MLPValueAndJacobian.apply(x, 3, activation, net.beta, *ps)
            assert torch.autograd.gradcheck(fn, (x, *params))
    net = MLP(5, 3, hidden=4, layers=2).double()
    params = [p.detach().clone().requires_grad_() for p in net.parameter_list()]
    z, u = (torch.randn(2, k, dtype=torch.float64, requires_grad=True) for k in (3, 2))
    P_factor, Q_factor = (torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def time_update(z, P_factor, u, Q_factor, *ps):
        return _ResidualTimeUpdate.apply(z, P_factor @ P_factor.mT, u, Q_factor @ Q_factor.mT, "softplus", 2.0, *ps)
    assert torch.autograd.gradcheck(time_update, (z, P_factor, u, Q_factor, *params))


class _VROLoss(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y, u):
        return vro(self.model, y, u, iteration=10**6)[0]


def test_vro_gradient_matches_finite_differences(tiny):
    "The whole loss (filter, smoother, replay, KL) through every fused node, against finite differences."
    model, y, u, _ = tiny
    wrapper = _VROLoss(model)
    names = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    values = tuple(p.detach().clone().requires_grad_() for n, p in wrapper.named_parameters() if p.requires_grad)

    def loss(*params):
        return torch.func.functional_call(wrapper, dict(zip(names, params)), (y[:2, :4], u[:2, :4]))
    assert torch.autograd.gradcheck(loss, values, atol=1e-6)
