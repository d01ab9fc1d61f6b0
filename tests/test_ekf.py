"""Checks of the EKF, RTS smoother and predictor against independent references."""
import pytest
import torch
from torch.autograd.functional import jacobian

from naive import naive_filter, naive_smoother

from replay_overshooting.ekf import (
    dynamics_and_jacobian, ekf_filter, ekf_predict, observation_and_jacobian, rts_smoother,
)

pytestmark = pytest.mark.usefixtures("backend")  # every test with each backend: C++ loops, fused nodes, reference
F64 = dict(dtype=torch.float64)


class Pendulumish(torch.nn.Module):
    "A small nonlinear controlled system: z' = z + dt * (tanh(W z) + B u)."

    def __init__(self, n=3, m=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(n, n, generator=g, **F64))
        self.B = torch.nn.Parameter(torch.randn(n, m, generator=g, **F64))

    def forward(self, z, u):
        return z + 0.3 * (torch.tanh(z @ self.W.T) + u @ self.B.T)


class SquashObs(torch.nn.Module):
    def __init__(self, n=3, p=2, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.H = torch.nn.Parameter(torch.randn(p, n, generator=g, **F64))

    def forward(self, z):
        return torch.sin(z @ self.H.T) + 0.5 * z[:, :1]


class WithJacobian(torch.nn.Module):
    "Wraps a module and supplies the Jacobian itself (autograd per call), to exercise the fast-path hook."

    def __init__(self, inner, takes_control):
        super().__init__()
        self.inner, self.takes_control = inner, takes_control
        self.calls = 0

    def forward(self, *args):
        return self.inner(*args)

    def value_and_jacobian(self, z, *rest, backend=None):
        self.calls += 1
        value = self.inner(z, *rest)
        jac = torch.func.vmap(torch.func.jacfwd(lambda z1, *r1: self.inner(z1[None], *(x[None] for x in r1))[0]))(z, *rest)
        return value, jac


def problem(B=4, T=7, n=3, p=2, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, T, p, generator=g, **F64)
    u = torch.randn(B, T, m, generator=g, **F64)
    mu0 = 0.1 * torch.randn(n, generator=g, **F64)
    P0 = torch.eye(n, **F64) * 0.7
    Q = torch.diag(torch.tensor([0.05, 0.1, 0.02], **F64))[:n, :n]
    R = torch.tensor([[0.1, 0.03], [0.03, 0.2]], **F64)[:p, :p]
    return y, u, mu0, P0, Q, R


@pytest.mark.parametrize("fast_path", [False, True])
def test_nonlinear_filter_and_smoother_match_naive_reference(fast_path):
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem()
    if fast_path:
        dyn, obs = WithJacobian(dyn, True), WithJacobian(obs, False)
    res = ekf_filter(dyn, obs, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R, u=u)
    fm, fc, pm, pc, ll = naive_filter(dyn, obs, y, u, mu0, P0, Q, R)
    torch.testing.assert_close(res.filtered_means, fm, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.filtered_covs, fc, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.predicted_means, pm, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.predicted_covs, pc, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.log_likelihoods, ll, atol=1e-8, rtol=0)
    sm = rts_smoother(dyn, res, dynamics_cov=Q, u=u)
    ref_m, ref_c = naive_smoother(dyn, fm, fc, pm, pc, u)
    torch.testing.assert_close(sm.smoothed_means, ref_m, atol=1e-8, rtol=0)
    torch.testing.assert_close(sm.smoothed_covs, ref_c, atol=1e-8, rtol=0)
    if fast_path:
        assert dyn.calls > 0 and obs.calls > 0, "the value_and_jacobian hook was not used"


def test_predictor_matches_naive_loop():
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem()
    B, steps = y.shape[0], 5
    mu = torch.randn(B, 3, **F64)
    pred = ekf_predict(dyn, obs, mean=mu, cov=P0.expand(B, 3, 3), dynamics_cov=Q, obs_cov=R, steps=steps, u=u)
    for b in range(B):
        mean, cov = mu[b], P0
        for k in range(steps):
            C = jacobian(lambda z: obs(z[None])[0], mean)
            torch.testing.assert_close(pred.means[b, k], mean, atol=1e-10, rtol=0)
            torch.testing.assert_close(pred.covs[b, k], cov, atol=1e-10, rtol=0)
            torch.testing.assert_close(pred.obs_means[b, k], obs(mean[None])[0], atol=1e-10, rtol=0)
            torch.testing.assert_close(pred.obs_covs[b, k], C @ cov @ C.T + R, atol=1e-10, rtol=0)
            A = jacobian(lambda z: dyn(z[None], u[b, k][None])[0], mean)
            mean, cov = dyn(mean[None], u[b, k][None])[0], A @ cov @ A.T + Q
    latent = ekf_predict(dyn, None, mean=mu, cov=P0.expand(B, 3, 3), dynamics_cov=Q, obs_cov=R, steps=steps, u=u)
    assert latent.obs_means is None and latent.obs_covs is None  # no observation model: latent beliefs only
    torch.testing.assert_close(latent.means, pred.means, atol=0, rtol=0)
    torch.testing.assert_close(latent.covs, pred.covs, atol=0, rtol=0)


def test_masked_step_equals_dropping_the_observation():
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem(T=6)
    mask = torch.ones(y.shape[:2], dtype=torch.bool)
    mask[:, 2] = False
    y_nan = y.clone()
    y_nan[:, 2] = float("nan")
    noise = dict(dynamics_cov=Q, obs_cov=R)
    masked = ekf_filter(dyn, obs, y_nan, initial_mean=mu0, initial_cov=P0, **noise, u=u, mask=mask)
    # Dropping step 2: filter the first two steps, predict across step 2 by hand, filter the rest.
    head = ekf_filter(dyn, obs, y[:, :2], initial_mean=mu0, initial_cov=P0, **noise, u=u[:, :2])
    across = ekf_predict(dyn, obs, mean=head.filtered_means[:, -1], cov=head.filtered_covs[:, -1], **noise, steps=3,
                         u=u[:, 1:3])
    tail = ekf_filter(dyn, obs, y[:, 3:], initial_mean=across.means[:, 2], initial_cov=across.covs[:, 2], **noise,
                      u=u[:, 3:])
    torch.testing.assert_close(masked.filtered_means[:, 2], across.means[:, 1], atol=1e-12, rtol=0)
    torch.testing.assert_close(masked.filtered_means[:, 3:], tail.filtered_means, atol=1e-12, rtol=0)
    torch.testing.assert_close(masked.filtered_covs[:, 3:], tail.filtered_covs, atol=1e-12, rtol=0)
    assert torch.isfinite(masked.filtered_means).all() and (masked.log_likelihoods[:, 2] == 0).all()
    # gradients stay finite although the masked observations are NaN
    dyn.zero_grad()
    sm = rts_smoother(dyn, masked, dynamics_cov=Q, u=u)
    (masked.log_likelihoods.sum() + sm.smoothed_means.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in dyn.parameters())


def test_all_masked_equals_pure_prediction():
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem()
    B, T, _ = y.shape
    blind = ekf_filter(dyn, obs, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R, u=u,
                       mask=torch.zeros(B, T, dtype=torch.bool))
    pred = ekf_predict(dyn, obs, mean=mu0.expand(B, 3), cov=P0.expand(B, 3, 3), dynamics_cov=Q, obs_cov=R, steps=T,
                       u=u)
    torch.testing.assert_close(blind.filtered_means, pred.means, atol=1e-12, rtol=0)
    torch.testing.assert_close(blind.filtered_covs, pred.covs, atol=1e-12, rtol=0)


def test_gradcheck_filter_smoother_predictor():
    dyn, obs = Pendulumish(n=2, m=1), SquashObs(n=2, p=2)
    g = torch.Generator().manual_seed(3)
    y, u = torch.randn(2, 3, 2, generator=g, **F64), torch.randn(2, 3, 1, generator=g, **F64)
    mu0 = torch.zeros(2, **F64, requires_grad=True)
    q_factor = torch.tensor([[0.3, 0.0], [0.1, 0.2]], **F64, requires_grad=True)
    r_factor = torch.tensor([[0.4, 0.0], [0.05, 0.3]], **F64, requires_grad=True)
    params = (mu0, q_factor, r_factor, dyn.W, dyn.B, obs.H)

    def loss(mu0, q_factor, r_factor, W, Bm, H):
        dyn.W, dyn.B, obs.H = W, Bm, H
        Q, R = q_factor @ q_factor.T, r_factor @ r_factor.T
        P0 = torch.eye(2, **F64)
        res = ekf_filter(dyn, obs, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R, u=u)
        sm = rts_smoother(dyn, res, dynamics_cov=Q, u=u)
        pred = ekf_predict(dyn, obs, mean=sm.smoothed_means[:, 0], cov=sm.smoothed_covs[:, 0], dynamics_cov=Q,
                           obs_cov=R, steps=3, u=u)
        return (res.log_likelihoods.sum() + sm.smoothed_covs.sum() + sm.prior_means.sum()
                + pred.obs_means.sum() + pred.obs_covs.sum())

    for name in ("W", "B"):
        delattr(dyn, name)
    delattr(obs, "H")
    assert torch.autograd.gradcheck(loss, params, atol=1e-6)


def test_batch_elements_do_not_interact():
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem(B=5)
    prior = dict(initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R)
    full = ekf_filter(dyn, obs, y, **prior, u=u)
    y2 = y.clone()
    y2[0] += 10.0
    perturbed = ekf_filter(dyn, obs, y2, **prior, u=u)
    torch.testing.assert_close(perturbed.filtered_means[1:], full.filtered_means[1:], atol=0, rtol=0)
    assert not torch.allclose(perturbed.filtered_means[0], full.filtered_means[0])
    single = ekf_filter(dyn, obs, y[2:3], **prior, u=u[2:3])
    torch.testing.assert_close(single.filtered_means[0], full.filtered_means[2], atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_covariances_stay_positive_definite_over_long_prediction(dtype):
    dyn, obs = Pendulumish().to(dtype), SquashObs().to(dtype)
    B, steps = 8, 200
    # a fixed start: from some starts this system's covariance grows ~1e6x, beyond float32's precision
    mu = torch.randn(B, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    P = torch.eye(3, dtype=dtype).expand(B, 3, 3)
    Q, R = 1e-3 * torch.eye(3, dtype=dtype), 1e-3 * torch.eye(2, dtype=dtype)
    with torch.no_grad():
        pred = ekf_predict(dyn, obs, mean=mu, cov=P, dynamics_cov=Q, obs_cov=R, steps=steps,
                           u=torch.zeros(B, steps, 2, dtype=dtype))
    assert torch.isfinite(pred.covs).all()
    assert (pred.covs == pred.covs.mT).all(), "covariances must be exactly symmetric"
    assert (torch.linalg.eigvalsh(pred.covs) > 0).all()
    assert (torch.linalg.eigvalsh(pred.obs_covs) > 0).all()


def test_float32_matches_float64():
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem()
    ref = ekf_filter(dyn, obs, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R, u=u)
    f32 = ekf_filter(dyn.float(), obs.float(), y.float(), initial_mean=mu0.float(), initial_cov=P0.float(),
                     dynamics_cov=Q.float(), obs_cov=R.float(), u=u.float())
    assert f32.filtered_means.dtype == torch.float32
    torch.testing.assert_close(f32.filtered_means.double(), ref.filtered_means, atol=1e-4, rtol=1e-4)


def test_no_controls_and_batched_noise():
    dyn = lambda z, u: z + 0.1 * torch.sin(z)
    obs = lambda z: z[:, :2] ** 2 + z[:, :2]
    y, _, mu0, P0, Q, R = problem()
    B = y.shape[0]
    shared = ekf_filter(dyn, obs, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R)
    batched = ekf_filter(dyn, obs, y, initial_mean=mu0.expand(B, 3), initial_cov=P0.expand(B, 3, 3),
                         dynamics_cov=Q.expand(B, 3, 3), obs_cov=R.expand(B, 2, 2))
    torch.testing.assert_close(shared.filtered_covs, batched.filtered_covs, atol=1e-14, rtol=0)
    sm = rts_smoother(dyn, shared, dynamics_cov=Q)
    assert sm.smoothed_means.shape == (B, y.shape[1], 3)


def test_value_and_jacobian_helpers_match_autograd():
    dyn, obs = Pendulumish(), SquashObs()
    z, u = torch.randn(4, 3, **F64), torch.randn(4, 2, **F64)
    value, A = dynamics_and_jacobian(dyn, z, u)
    for b in range(4):
        torch.testing.assert_close(A[b], jacobian(lambda x: dyn(x[None], u[b][None])[0], z[b]))
    value, C = observation_and_jacobian(obs, z)
    for b in range(4):
        torch.testing.assert_close(C[b], jacobian(lambda x: obs(x[None])[0], z[b]))


def _bad(**changes):
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem()
    args = dict(y=y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R, u=u, mask=None)
    args.update(changes)
    return lambda: ekf_filter(dyn, obs, **args)


@pytest.mark.parametrize("changes, message", [
    (dict(y=torch.randn(4, 7, **F64)), r"y must have shape \(B, T, p\)"),
    (dict(y=torch.randn(4, 7, 2, **F64).numpy()), r"y must be a torch.Tensor of shape \(B, T, p\), got ndarray; "
                                                   r"convert it with torch.as_tensor\(y\)"),
    (dict(y=torch.randn(4, 7, 2).half()), "y has dtype torch.float16, but the filter runs in float32 or float64"),
    (dict(initial_mean=torch.tensor([0.0, float("nan"), 0.0], **F64)), "initial_mean contains NaN or inf"),
    (dict(u=torch.randn(4, 6, 2, **F64)), "u must have shape"),
    (dict(mask=torch.ones(4, 6, dtype=torch.bool)), "mask must have shape"),
    (dict(mask=torch.ones(4, 7)), "mask must be a bool"),
    (dict(initial_cov=torch.eye(2, **F64)), "initial_cov must have shape"),
    (dict(dynamics_cov=torch.ones(3, 4, **F64)), "dynamics_cov must have shape"),
    (dict(dynamics_cov=-torch.eye(3, **F64)), "dynamics_cov is not positive definite"),
    (dict(obs_cov=torch.tensor([[1.0, 0.5], [0.0, 1.0]], **F64)), "obs_cov is not symmetric"),
    (dict(obs_cov=torch.eye(2)), "obs_cov has dtype"),
    (dict(initial_mean=torch.zeros(5, 3, **F64)), "initial_mean must have shape"),
    (dict(obs_cov=torch.full((2, 2), float("nan"), **F64)), "obs_cov contains NaN"),
])
def test_bad_inputs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        _bad(**changes)()


def test_nan_in_observed_y_is_rejected_but_allowed_where_masked():
    y, *_ = problem()
    y = y.clone()
    y[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf at observed step \(batch 1, time 3\)"):
        _bad(y=y)()
    mask = torch.ones(y.shape[:2], dtype=torch.bool)
    mask[1, 3] = False
    assert torch.isfinite(_bad(y=y, mask=mask)().filtered_means).all()


def test_smoother_and_predictor_reject_bad_input():
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem()
    res = ekf_filter(dyn, obs, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R, u=u)
    start = dict(mean=mu0.expand(4, 3), cov=P0.expand(4, 3, 3))
    with pytest.raises(ValueError, match="FilterResult"):
        rts_smoother(dyn, tuple(res), dynamics_cov=Q, u=u)
    with pytest.raises(ValueError, match="u must have shape"):
        rts_smoother(dyn, res, dynamics_cov=Q, u=u[:, :3])
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ekf_predict(dyn, obs, **start, dynamics_cov=Q, obs_cov=R, steps=0)
    with pytest.raises(ValueError, match="u must have shape"):
        ekf_predict(dyn, obs, **start, dynamics_cov=Q, obs_cov=R, steps=10, u=u)
    with pytest.raises(ValueError, match="cov is not positive definite"):
        ekf_predict(dyn, obs, mean=mu0.expand(4, 3), cov=-torch.eye(3, **F64).expand(4, 3, 3), dynamics_cov=Q,
                    obs_cov=R, steps=5, u=u)
    with pytest.raises(ValueError, match="dynamics_cov contains NaN"):
        ekf_predict(dyn, obs, **start, dynamics_cov=torch.full((3, 3), float("nan"), **F64), obs_cov=R, steps=5, u=u)
    with pytest.raises(ValueError, match="mean contains NaN"):
        ekf_predict(dyn, obs, mean=torch.full((4, 3), float("nan"), **F64), cov=P0.expand(4, 3, 3), dynamics_cov=Q,
                    obs_cov=R, steps=5, u=u)
    with pytest.raises(ValueError, match=r"mean must be \(B, n\) and cov \(B, n, n\)"):
        ekf_predict(dyn, obs, mean=mu0, cov=P0, dynamics_cov=Q, obs_cov=R, steps=5, u=u)
    asymmetric = Q.clone()
    asymmetric[0, 1] += 0.5
    with pytest.raises(ValueError, match="dynamics_cov is not symmetric"):
        rts_smoother(dyn, res, dynamics_cov=asymmetric, u=u)
    with pytest.raises(ValueError, match="dynamics_cov contains NaN"):
        rts_smoother(dyn, res, dynamics_cov=torch.full((3, 3), float("nan"), **F64), u=u)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    dyn, obs = Pendulumish(), SquashObs()
    y, u, mu0, P0, Q, R = problem()
    cpu = ekf_filter(dyn, obs, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q, obs_cov=R, u=u)
    dev = torch.device("cuda")
    gpu = ekf_filter(dyn.to(dev), obs.to(dev), y.to(dev), initial_mean=mu0.to(dev), initial_cov=P0.to(dev),
                     dynamics_cov=Q.to(dev), obs_cov=R.to(dev), u=u.to(dev))
    assert gpu.filtered_means.device.type == "cuda"
    torch.testing.assert_close(gpu.filtered_means.cpu(), cpu.filtered_means, atol=1e-10, rtol=0)


def _sym_factor(X):
    return X @ X.mT + 0.5 * torch.eye(X.shape[-1], **F64)


def test_gradcheck_fused_kalman_update():
    "The hand-written backward of the measurement update against finite differences (symmetric covariances)."
    from replay_overshooting.ekf import _KalmanUpdate
    g = torch.Generator().manual_seed(5)
    args = [torch.randn(*s, generator=g, **F64, requires_grad=True)
            for s in ((2, 3), (2, 3, 3), (2, 2), (2, 2, 3), (2, 2, 2), (2, 2))]
    fn = lambda m, Pf, yp, C, Rf, y: _KalmanUpdate.apply(m, _sym_factor(Pf), yp, C, _sym_factor(Rf), y, False)[:3]
    assert torch.autograd.gradcheck(fn, args)


def test_gradcheck_fused_smoother_recursion():
    from replay_overshooting.ekf import _RTSRecursion
    g = torch.Generator().manual_seed(6)
    args = [torch.randn(*s, generator=g, **F64, requires_grad=True)
            for s in ((2, 3, 2), (2, 3, 2, 2), (2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2))]
    fn = lambda fm, fcf, pm, pcf, G: _RTSRecursion.apply(fm, _sym_factor(fcf), pm, _sym_factor(pcf), G)
    assert torch.autograd.gradcheck(fn, args)


def test_robust_path_reruns_when_a_factorisation_fails():
    "A singular innovation covariance makes the filter rerun its steps with jitter (and warn), not fail."
    from replay_overshooting.gaussian import CholeskyJitterWarning
    y, u, mu0, P0, Q, R = problem(B=2, T=3)
    twice_first = lambda z: z[:, :1].expand(-1, 2)  # C = [[1,0,0],[1,0,0]]: C Σ Cᵀ has rank 1
    with pytest.warns(CholeskyJitterWarning):
        res = ekf_filter(lambda z, u: z, twice_first, y, initial_mean=mu0, initial_cov=P0, dynamics_cov=Q,
                         obs_cov=1e-300 * torch.eye(2, **F64))
    assert torch.isfinite(res.filtered_means).all() and torch.isfinite(res.log_likelihoods).all()
