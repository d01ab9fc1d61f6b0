"""Checks of the PlaNet RSSM and GSSM baselines: shapes, time alignment, overshooting terms against
naive loops, the sample-based predictive against a closed form, training on simulated data, and
input validation."""
import math

import pytest
import torch
from torch import nn

from replay_overshooting import backends
from replay_overshooting.backends import BackendUnavailableError, native_extension
from replay_overshooting.baselines import (
    GSSM, PAPER_BASELINES, RSSM, paper_baseline, parameter_count, rssm_filter, rssm_open_loop_priors,
)

needs_native = pytest.mark.skipif(native_extension() is None, reason="the C++ extension is not built here")

F64 = dict(dtype=torch.float64)
PAPER_PARAMETERS = {"planet_push": 147_412, "planet_pend_img": 91_392}
SMALL_RSSM = dict(latent_dim=4, deterministic_dim=24, hidden_dim=32, embed_dim=8, channels=8)
SMALL_GSSM = dict(latent_dim=4, hidden_dim=32, rnn_dim=24, embed_dim=8, channels=8)


@pytest.fixture(autouse=True)
def one_thread():
    "These models run many tiny ops: a second thread only adds synchronisation, and stalls on a busy machine."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def damped_oscillator(batch, steps, *, seed=0, dt=0.1):
    "Noisy damped oscillator x'' = -4 x - 0.4 x' + u, observed as (x, x') plus noise; u piecewise constant."
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(batch, 2, generator=g)
    u = torch.randn(batch, steps // 5 + 1, 1, generator=g).repeat_interleave(5, 1)[:, :steps]
    ys = []
    for t in range(steps):
        ys.append(state + 0.05 * torch.randn(batch, 2, generator=g))
        x, v = state.unbind(-1)
        accel = -4.0 * x - 0.4 * v + u[:, t, 0]
        state = torch.stack([x + dt * v, v + dt * accel], -1) + 0.02 * torch.randn(batch, 2, generator=g)
    return torch.stack(ys, 1), u


def moving_disks(batch, steps, *, size=16, seed=0):
    "Dark disks of radius 2.5 px on a white background, moving at random constant velocities (bouncing), in [0, 1]."
    g = torch.Generator().manual_seed(seed)
    position = 4 + (size - 8) * torch.rand(batch, 2, generator=g)
    velocity = 2 * torch.rand(batch, 2, generator=g) - 1
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float() + 0.5
    frames = []
    for _ in range(steps):
        distance = (grid - position[:, None, None]).norm(dim=-1)
        frames.append((distance / 2.5).clamp(0, 1))
        position = position + velocity
        bounce = (position < 2.5) | (position > size - 2.5)
        velocity = torch.where(bounce, -velocity, velocity)
    noisy = torch.stack(frames, 1) + 0.02 * torch.randn(batch, steps, size, size, generator=g)
    return noisy.clamp(0, 1)


def test_parameter_counts_beside_the_paper():
    for name in PAPER_BASELINES:
        count = parameter_count(paper_baseline(name))
        print(f"{name:20s} {count:8,d}  paper {PAPER_PARAMETERS.get(name, '-')}")
        if name in PAPER_PARAMETERS:
            assert 0.5 < count / PAPER_PARAMETERS[name] < 2


@pytest.mark.parametrize("model_class", [RSSM, GSSM])
@pytest.mark.parametrize("images", [False, True])
def test_shapes(model_class, images):
    torch.manual_seed(0)
    sizes = SMALL_RSSM if model_class is RSSM else SMALL_GSSM
    observations = dict(image_size=16) if images else dict(obs_dim=2)
    model = model_class(**observations, ctrl_dim=1, **sizes)
    y = moving_disks(3, 7) if images else damped_oscillator(3, 7)[0]
    u = torch.randn(3, 7 + 5, 1)
    loss, parts = model.loss(y, u[:, :7])
    assert loss.shape == () and torch.isfinite(loss)
    assert all(v.shape == () and not v.requires_grad for v in parts.values())
    forecast = model.forecast(y, u, predict_steps=5, num_samples=6)
    if images:
        assert forecast.mean.shape == (3, 5, 256) and forecast.cov is None
        assert forecast.samples.shape == (6, 3, 5, 16, 16)
        assert forecast.pixel_log_probs.shape == (3, 5, 16, 16, 256)
        torch.testing.assert_close(forecast.pixel_log_probs.logsumexp(-1), torch.zeros(3, 5, 16, 16))
    else:
        assert forecast.mean.shape == (3, 5, 2) and forecast.cov.shape == (3, 5, 2, 2)
        assert forecast.samples.shape == (6, 3, 5, 2) and forecast.pixel_log_probs is None


def small_rssm(overshoot="none", distance=2, **options):
    torch.manual_seed(0)
    return RSSM(obs_dim=2, ctrl_dim=1, overshoot=overshoot, overshoot_distance=distance, **SMALL_RSSM, **options).double()


@pytest.mark.parametrize("overshoot", ["latent", "observation"])
def test_overshooting_changes_the_loss_and_reduces_to_the_elbo_at_k1(overshoot):
    y, u = (x.double() for x in damped_oscillator(4, 9))
    torch.manual_seed(3)
    plain, _ = small_rssm().loss(y, u)
    torch.manual_seed(3)
    at_one, parts_one = small_rssm(overshoot, 1).loss(y, u)
    torch.manual_seed(3)
    at_two, _ = small_rssm(overshoot, 2).loss(y, u)
    assert at_one.item() == plain.item()
    assert all(v.item() == 0 for k, v in parts_one.items() if k.startswith("overshoot"))
    assert abs(at_two.item() - plain.item()) > 1e-3


def naive_kl(mean_q, std_q, mean_p, std_p):
    q, p = torch.distributions.Normal(mean_q, std_q), torch.distributions.Normal(mean_p, std_p)
    return torch.distributions.kl_divergence(q, p).sum(-1)


def test_open_loop_priors_start_at_the_posterior_d_steps_back():
    model = small_rssm()
    y, u = (x.double() for x in damped_oscillator(2, 8))
    states = rssm_filter(model, model.observations.embed(y), u)
    priors = rssm_open_loop_priors(model, states, u, 3)
    assert [p.distance for p in priors] == [1, 2, 3]
    torch.testing.assert_close(priors[0].deterministic, states.deterministic[:, 1:], rtol=0, atol=0)
    for t in range(2, 8):  # 2 steps: posterior (h, s) at t-2 -> h_{t-1} -> sample s' -> h_{t|t-2}
        s_prime = priors[0].stochastic[:, t - 2]  # 1-step prior sample for step t-1
        expected = model.transition(states.deterministic[:, t - 1], s_prime, u[:, t - 1])
        torch.testing.assert_close(priors[1].deterministic[:, t - 2], expected, rtol=0, atol=1e-12)
    for t in range(3, 8):
        expected = model.transition(priors[1].deterministic[:, t - 3], priors[1].stochastic[:, t - 3], u[:, t - 1])
        torch.testing.assert_close(priors[2].deterministic[:, t - 3], expected, rtol=0, atol=1e-12)
        mean, std = model.prior(expected)
        torch.testing.assert_close(priors[2].mean[:, t - 3], mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("overshoot", ["latent", "observation"])
def test_overshooting_term_matches_a_naive_loop(overshoot):
    distance, steps = 3, 7
    model = small_rssm(overshoot, distance, overshoot_weight=0.7)
    y, u = (x.double() for x in damped_oscillator(2, steps))
    torch.manual_seed(5)
    loss, parts = model.loss(y, u)
    torch.manual_seed(5)
    states = rssm_filter(model, model.observations.embed(y), u)
    priors = rssm_open_loop_priors(model, states, u, distance)
    per_distance = []
    for d in range(2, distance + 1):
        prior, terms = priors[d - 1], []
        for t in range(d, steps):
            if overshoot == "latent":
                terms.append(naive_kl(states.posterior_mean[:, t], states.posterior_std[:, t],
                                      prior.mean[:, t - d], prior.std[:, t - d]))
            else:
                features = torch.cat([prior.deterministic[:, t - d], prior.stochastic[:, t - d]], -1)
                decoded = torch.distributions.Normal(model.observations.decoder(features), model.observations.std())
                terms.append(-decoded.log_prob(y[:, t]).sum(-1))
        per_distance.append(torch.stack(terms).mean())
    expected = torch.stack(per_distance).mean()
    key = "overshoot_kl" if overshoot == "latent" else "overshoot_nll"
    torch.testing.assert_close(parts[key], expected.detach(), rtol=1e-12, atol=1e-12)
    elbo_terms = parts["reconstruction_nll"] + parts["kl"]
    torch.testing.assert_close(loss.detach(), elbo_terms + 0.7 * expected.detach(), rtol=1e-12, atol=1e-12)


def test_free_nats_floor_the_kl():
    model = small_rssm(free_nats=50.0)
    y, u = (x.double() for x in damped_oscillator(2, 5))
    _, parts = model.loss(y, u)
    assert parts["kl"].item() == 50.0


@pytest.mark.parametrize("recurrence", ["plain", "hoisted", pytest.param("native", marks=needs_native), "auto"])
def test_rssm_elbo_against_a_naive_loop(recurrence):
    """Loss = mean over batch and time of -log p(y_t | h_t, s_t) + KL(q_t || p_t), recomputed from the sampled path
    of the plain filter (the same random draws)."""
    model = small_rssm(recurrence=recurrence)
    y, u = (x.double() for x in damped_oscillator(3, 6))
    torch.manual_seed(2)
    loss, _ = model.loss(y, u)
    torch.manual_seed(2)
    states = rssm_filter(model, model.observations.embed(y), u)
    total = 0.0
    for t in range(6):
        mean, std = model.posterior(states.deterministic[:, t], model.observations.embed(y[:, t]))
        prior_mean, prior_std = model.prior(states.deterministic[:, t])
        features = torch.cat([states.deterministic[:, t], states.stochastic[:, t]], -1)
        decoded = torch.distributions.Normal(model.observations.decoder(features), model.observations.std())
        total = total - decoded.log_prob(y[:, t]).sum(-1) + naive_kl(mean, std, prior_mean, prior_std)
    torch.testing.assert_close(loss, (total / 6).mean(), rtol=1e-12, atol=1e-12)


@needs_native
@pytest.mark.parametrize("overshoot", ["none", "latent", "observation"])
def test_native_recurrence_gives_the_plain_loss_and_gradients(overshoot):
    "The C++ node's loss and every parameter's gradient equal the plain loop's, in float64, on the same draws."
    results = []
    for recurrence in ("plain", "native"):
        torch.manual_seed(0)
        model = small_rssm(overshoot, recurrence=recurrence)
        y, u = (x.double() for x in damped_oscillator(3, 9))
        torch.manual_seed(2)
        loss, _ = model.loss(y, u)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (plain_loss, plain_grads), (native_loss, native_grads) = results
    torch.testing.assert_close(native_loss, plain_loss, rtol=1e-10, atol=1e-10)
    for a, b in zip(plain_grads, native_grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@needs_native
@pytest.mark.parametrize("holes", [False, True])
def test_native_gssm_gives_the_plain_loss_gradients_and_forecast(holes):
    """The GSSM's C++ nodes (backward GRU, posterior recursion): loss, every parameter's gradient and a forecast equal
    the plain loops', in float64, on the same draws, with and without missing observations."""
    y, u = (x.double() for x in damped_oscillator(3, 9))
    mask = None
    if holes:
        mask = torch.ones(3, 9, dtype=torch.bool)
        mask[0, 2] = mask[1, 5] = mask[2, 8] = False
    results = []
    for recurrence in ("plain", "native"):
        torch.manual_seed(0)
        model = GSSM(obs_dim=2, ctrl_dim=1, recurrence=recurrence, **SMALL_GSSM).double()
        torch.manual_seed(2)
        loss, _ = model.loss(y, u, mask)
        loss.backward()
        forecast = model.forecast(y[:, :6], u, predict_steps=3, num_samples=4, generator=torch.Generator().manual_seed(1))
        results.append((loss.detach(), [p.grad for p in model.parameters()], forecast.samples))
    (plain_loss, plain_grads, plain_samples), (native_loss, native_grads, native_samples) = results
    torch.testing.assert_close(native_loss, plain_loss, rtol=1e-10, atol=1e-10)
    for a, b in zip(plain_grads, native_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(native_samples, plain_samples, rtol=1e-10, atol=1e-10)


@needs_native
def test_a_replaced_combiner_runs_the_plain_loops():
    "The posterior node runs the combiner GSSM builds: with another, 'auto' runs the plain loops and 'native' says so."
    torch.manual_seed(0)
    model = GSSM(obs_dim=2, ctrl_dim=1, **SMALL_GSSM).double()
    model.combiner = nn.Linear(4 + 1 + 24, 8).double()
    y, u = (x.double() for x in damped_oscillator(2, 5))
    losses = {}
    for recurrence in ("auto", "plain"):
        model.recurrence = recurrence
        torch.manual_seed(1)
        losses[recurrence] = model.loss(y, u)[0]
    assert losses["auto"].item() == losses["plain"].item()
    model.recurrence = "native"
    with pytest.raises(ValueError, match="recurrence='plain' or 'auto'"):
        model.loss(y, u)


def test_gssm_without_the_extension_runs_the_plain_loops(monkeypatch):
    "With the C++ extension off, 'auto' gives the plain loops' loss exactly and 'native' says what stops it."
    monkeypatch.setattr(backends, "native_extension", lambda: None)
    y, u = (x.double() for x in damped_oscillator(2, 5))
    losses = {}
    for recurrence in ("auto", "plain"):
        torch.manual_seed(0)
        model = GSSM(obs_dim=2, ctrl_dim=1, recurrence=recurrence, **SMALL_GSSM).double()
        torch.manual_seed(1)
        losses[recurrence] = model.loss(y, u)[0]
    assert losses["auto"].item() == losses["plain"].item()
    model.recurrence = "native"
    with pytest.raises(BackendUnavailableError, match="recurrence='native' cannot run: .*extension is not built"):
        model.loss(y, u)


@pytest.mark.parametrize("model_class", [RSSM, GSSM])
def test_native_recurrence_names_its_own_option_when_it_cannot_run(model_class):
    "Asked for on tensors the C++ nodes do not take, recurrence='native' names itself and the fallback, not `backend`."
    sizes = SMALL_RSSM if model_class is RSSM else SMALL_GSSM
    model = model_class(obs_dim=2, ctrl_dim=1, recurrence="native", **sizes).to(torch.bfloat16)
    y, u = (x.to(torch.bfloat16) for x in damped_oscillator(2, 5))
    with pytest.raises(BackendUnavailableError, match="recurrence='native' cannot run: .*bfloat16") as raised:
        model.loss(y, u)
    assert "recurrence='auto'" in str(raised.value) and "backend" not in str(raised.value)


@pytest.mark.parametrize("model_class", [RSSM, GSSM])
def test_control_alignment_and_reproducible_forecasts(model_class):
    "u[:, t] drives t -> t+1: the first prediction (step F) depends on u[:, F-1] but not on u[:, F]."
    sizes = SMALL_RSSM if model_class is RSSM else SMALL_GSSM
    torch.manual_seed(0)
    model = model_class(obs_dim=2, ctrl_dim=1, **sizes).double()
    y, u = (x.double() for x in damped_oscillator(2, 9))
    y, u = y[:, :6], u

    def forecast(controls):
        return model.forecast(y, controls, predict_steps=3, num_samples=5, generator=torch.Generator().manual_seed(1))

    base = forecast(u)
    torch.testing.assert_close(forecast(u).samples, base.samples, rtol=0, atol=0)
    changed_next = u.clone()
    changed_next[:, 6] += 3.0
    first, rest = forecast(changed_next).samples[:, :, 0], forecast(changed_next).samples[:, :, 1]
    torch.testing.assert_close(first, base.samples[:, :, 0], rtol=0, atol=0)
    assert (rest - base.samples[:, :, 1]).abs().max() > 1e-6
    changed_driver = u.clone()
    changed_driver[:, 5] += 3.0
    assert (forecast(changed_driver).samples[:, :, 0] - base.samples[:, :, 0]).abs().max() > 1e-6
    unused = u.clone()
    unused[:, 8] += 3.0
    torch.testing.assert_close(forecast(unused).samples, base.samples, rtol=0, atol=0)


def linear_gaussian_gssm(A, B, C, q_std, r_std, start_mean, start_std):
    """A GSSM whose networks are replaced by affine maps, so that its forecast has a closed form:
    q(z_t | ...) = N(start_mean, diag start_std²) whatever the data, z' = A z + B u + N(0, diag q_std²),
    y = C z + N(0, diag r_std²)."""
    n, m, p = A.shape[0], B.shape[1], C.shape[0]
    model = GSSM(obs_dim=p, ctrl_dim=m, latent_dim=n, hidden_dim=8, rnn_dim=4, embed_dim=3).double()
    min_std = model.state_min_std

    def inverse_std(std, floor):
        return torch.log(torch.expm1(std - floor))

    with torch.no_grad():
        model.transition_net = nn.Linear(n + m, 2 * n).double()
        model.transition_net.weight.zero_()
        model.transition_net.weight[:n, :n] = A - torch.eye(n, **F64)
        model.transition_net.weight[:n, n:] = B
        model.transition_net.bias.copy_(torch.cat([torch.zeros(n, **F64), inverse_std(q_std, min_std)]))
        model.combiner = nn.Linear(n + m + 4, 2 * n).double()
        model.combiner.weight.zero_()
        model.combiner.bias.copy_(torch.cat([start_mean, inverse_std(start_std, min_std)]))
        model.observations.decoder = nn.Linear(n, p, bias=False).double()
        model.observations.decoder.weight.copy_(C)
        model.observations.raw_std.copy_(inverse_std(r_std, model.observations.obs_min_std))
    return model


def test_sample_based_nll_converges_to_the_closed_form():
    torch.manual_seed(0)
    A = torch.tensor([[0.9, 0.2], [-0.3, 0.8]], **F64)
    B = torch.tensor([[0.0], [0.5]], **F64)
    C = torch.tensor([[1.0, 0.5], [-0.2, 1.0]], **F64)
    q_std, r_std = torch.tensor([0.3, 0.2], **F64), torch.tensor([0.1, 0.25], **F64)
    start_mean, start_std = torch.tensor([1.0, -0.5], **F64), torch.tensor([0.4, 0.6], **F64)
    model = linear_gaussian_gssm(A, B, C, q_std, r_std, start_mean, start_std)
    batch, filter_steps, predict_steps = 3, 4, 5
    y = torch.randn(batch, filter_steps, 2, **F64)
    u = torch.randn(batch, filter_steps + predict_steps, 1, **F64)
    # closed form: z_{F-1} ~ N(start_mean, diag start_std²), then predict with u[:, F-1 ..]
    mean = start_mean.expand(batch, 2)
    cov = torch.diag(start_std.square()).expand(batch, 2, 2)
    obs_means, obs_covs = [], []
    for t in range(filter_steps, filter_steps + predict_steps):
        mean = mean @ A.T + u[:, t - 1] @ B.T
        cov = A @ cov @ A.T + torch.diag(q_std.square())
        obs_means.append(mean @ C.T)
        obs_covs.append(C @ cov @ C.T + torch.diag(r_std.square()))
    exact = torch.distributions.MultivariateNormal(torch.stack(obs_means, 1), torch.stack(obs_covs, 1))
    targets = exact.sample((20,))  # (20, B, P, 2): plausible truths
    exact_nll = -exact.log_prob(targets)

    errors = {}
    for num_samples in (100, 100_000):
        forecast = model.forecast(y, u, predict_steps=predict_steps, num_samples=num_samples,
                                  generator=torch.Generator().manual_seed(num_samples))
        estimate = -torch.distributions.MultivariateNormal(forecast.mean, forecast.cov).log_prob(targets)
        errors[num_samples] = (estimate - exact_nll).abs().mean().item()
    assert errors[100] < 0.5
    assert errors[100_000] < 0.02
    assert errors[100_000] < errors[100] / 5


TRAINING_CASES = [
    ("rssm", "none", False), ("rssm", "latent", False), ("rssm", "observation", False), ("gssm", "none", False),
    ("rssm", "none", True), ("rssm", "observation", True), ("gssm", "none", True),
]


@pytest.mark.parametrize("kind,overshoot,images", TRAINING_CASES)
def test_loss_falls_and_long_forecasts_stay_finite(kind, overshoot, images):
    torch.manual_seed(0)
    if images:
        y, u = moving_disks(4, 6), torch.zeros(4, 6, 1)
        observations = dict(image_size=16)
    else:
        y, u = damped_oscillator(16, 15)
        observations = dict(obs_dim=2)
    if kind == "rssm":
        model = RSSM(**observations, ctrl_dim=1, overshoot=overshoot, **SMALL_RSSM)
    else:
        model = GSSM(**observations, ctrl_dim=1, **SMALL_GSSM)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss, _ = model.loss(y, u)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 0 and last < (0.6 if images else 0.8) * first, (first, last)

    horizon, batch = 100, 1 if images else 2  # an image forecast decodes samples x batch x horizon frames
    controls = torch.cat([u[:batch, :5], torch.randn(batch, horizon, 1)], 1)
    with torch.no_grad():
        forecast = model.forecast(y[:batch, :5], controls, predict_steps=horizon, num_samples=3 if images else 100)
    assert torch.isfinite(forecast.mean).all() and torch.isfinite(forecast.samples).all()
    if images:
        assert torch.isfinite(forecast.pixel_log_probs).all()
    else:
        assert torch.isfinite(forecast.cov).all()
        assert (torch.linalg.eigvalsh(forecast.cov) > 0).all()


@pytest.mark.parametrize("model_class", [RSSM, GSSM])
def test_missing_observations_do_not_leak(model_class):
    sizes = SMALL_RSSM if model_class is RSSM else SMALL_GSSM
    torch.manual_seed(0)
    model = model_class(image_size=16, ctrl_dim=0, **sizes)
    frames = moving_disks(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = False
    holey = frames.clone()
    holey[~mask] = float("nan")
    torch.manual_seed(1)
    loss, _ = model.loss(holey, mask=mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    replaced = frames.clone()
    replaced[~mask] = 0.3
    torch.manual_seed(1)
    again, _ = model.loss(replaced, mask=mask)
    assert again.item() == loss.item()


def test_bad_inputs_raise_with_a_fix():
    vector = RSSM(obs_dim=2, ctrl_dim=1, **SMALL_RSSM)
    image = GSSM(image_size=16, **SMALL_GSSM)
    y, u = damped_oscillator(2, 4)
    frames = moving_disks(2, 4)
    with pytest.raises(ValueError, match="obs_dim=2"):
        vector.loss(y[..., :1], u)
    with pytest.raises(ValueError, match="pass u"):
        vector.loss(y)
    with pytest.raises(ValueError, match="controls must have shape"):
        vector.loss(y, u[:, :3])
    with pytest.raises(ValueError, match=r"controls must have shape \(B, 9"):
        vector.forecast(y, u, predict_steps=5)
    with pytest.raises(ValueError, match="predict_steps must be >= 1"):
        vector.forecast(y, u, predict_steps=0)
    with pytest.raises(ValueError, match="mask must be bool"):
        vector.loss(y, u, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="divide uint8 frames by 255"):
        image.loss(frames * 255)
    with pytest.raises(ValueError, match="frames"):
        image.loss(frames[..., :8])
    with pytest.raises(ValueError, match="controls"):
        image.loss(frames, torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="exactly one of obs_dim"):
        RSSM(obs_dim=2, image_size=16)
    with pytest.raises(ValueError, match="overshoot_distance"):
        RSSM(obs_dim=2, overshoot="latent", overshoot_distance=0)
    with pytest.raises(ValueError, match="unknown baseline"):
        paper_baseline("planet")
    assert math.isfinite(vector.loss(y, u)[0].item())
