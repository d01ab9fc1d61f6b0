"""Checks of the KVAE-style image EKF: pixel likelihood against hand computation, sampling, forecasts, training."""
import math

import pytest
import torch

from replay_overshooting.image_models import (
    NUM_GREY_LEVELS, ImageDecoder, ImageEKFModel, ImageEncoder, expected_image, image_nll, sample_image,
)


def moving_disks(batch, steps, *, size=16, seed=0):
    "Frames `(batch, steps, size, size)` in [0, 1]: a shaded disk of radius 3 px circling the centre."
    g = torch.Generator().manual_seed(seed)
    start = 2 * math.pi * torch.rand(batch, 1, generator=g)
    speed = 0.3 + 0.2 * torch.rand(batch, 1, generator=g)
    angles = start + speed * torch.arange(steps)
    frames = torch.empty(batch, steps, size, size)
    for b in range(batch):
        for t in range(steps):
            cx = (size - 1) / 2 + 0.3 * size * math.sin(angles[b, t])
            cy = (size - 1) / 2 - 0.3 * size * math.cos(angles[b, t])
            for i in range(size):
                for j in range(size):
                    frames[b, t, i, j] = min(1.0, math.hypot(i - cy, j - cx) / 3)
    return frames


def naive_nll(logits, levels):
    "Categorical NLL of one frame, summed over pixels with explicit loops."
    H, W, K = logits.shape
    total = 0.0
    for i in range(H):
        for j in range(W):
            row = logits[i, j].tolist()
            top = max(row)
            log_norm = top + math.log(sum(math.exp(v - top) for v in row))
            total -= row[int(levels[i, j])] - log_norm
    return total


def test_image_nll_equals_loops_for_batches_and_uint8():
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(2, 3, 4, 5, NUM_GREY_LEVELS, generator=g, dtype=torch.float64)
    levels = torch.randint(0, 256, (2, 3, 4, 5), generator=g, dtype=torch.uint8)
    nll = image_nll(logits, levels.double() / 255)
    assert nll.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            assert nll[b, t].item() == pytest.approx(naive_nll(logits[b, t], levels[b, t]), rel=1e-12)
    torch.testing.assert_close(image_nll(logits, levels), nll, rtol=0, atol=1e-10)


def test_float_frames_quantise_to_nearest_level():
    logits = torch.randn(1, 2, NUM_GREY_LEVELS, dtype=torch.float64)
    # 0.5 * 255 = 127.5 rounds (half to even) to 128; 0.6/255 rounds to 1.
    frame = torch.tensor([[0.5, 0.6 / 255]], dtype=torch.float64)
    expected = naive_nll(logits, torch.tensor([[128, 1]]))
    assert image_nll(logits, frame).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("bad, message", [(torch.full((2, 2), 1.5), "[0, 1]"), (torch.full((2, 2), math.nan), "[0, 1]"),
                                          (torch.zeros(2, 2, dtype=torch.int64), "float in [0, 1] or uint8")])
def test_image_nll_rejects_bad_frames(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        image_nll(torch.zeros(2, 2, NUM_GREY_LEVELS), bad)


def test_sample_image_hits_one_hot_and_frequencies():
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (3, 5, 6), generator=g)
    one_hot = torch.full((3, 5, 6, NUM_GREY_LEVELS), -math.inf).scatter(-1, levels.unsqueeze(-1), 0.0)
    assert torch.equal(sample_image(one_hot, generator=g), levels.float() / 255)
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.full((100, 100, NUM_GREY_LEVELS), -math.inf)
    logits[..., 0], logits[..., 100], logits[..., 255] = probs.log()
    draws = (sample_image(logits, generator=g) * 255).round().long()
    for level, p in zip((0, 100, 255), probs.tolist()):
        share = (draws == level).double().mean().item()
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / 10_000)
    assert expected_image(logits)[0, 0].item() == pytest.approx((0.3 * 100 + 0.2 * 255) / 255, rel=1e-5)


@pytest.mark.parametrize("size", [16, 32])
def test_encoder_decoder_shapes(size):
    enc = ImageEncoder(2, image_size=size, cond_dim=4).double()
    dec = ImageDecoder(2, image_size=size, cond_dim=4).double()
    condition = torch.eye(4, dtype=torch.float64)[[0, 1, 3]]
    mean, var = enc(torch.rand(3, size, size, dtype=torch.float64), condition)
    assert mean.shape == var.shape == (3, 2) and bool((var > 0).all())
    assert dec(mean, condition).shape == (3, size, size, NUM_GREY_LEVELS)


def test_condition_changes_the_encoding():
    torch.manual_seed(0)
    model = ImageEKFModel(3, 2, 0, cond_dim=2, hidden=8)
    frames = torch.rand(2, 4, 16, 16)
    first, _ = model.encode(frames, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    second, _ = model.encode(frames, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        model.encode(frames, torch.ones(8, 2))


def test_forecast_is_normalised_finite_and_shaped_over_100_steps():
    torch.manual_seed(0)
    model = ImageEKFModel(3, 2, 1, hidden=16)
    frames = moving_disks(2, 4)
    u = torch.randn(2, 4 + 100 - 1, 1)
    with torch.no_grad():
        fc = model.forecast(frames, u, predict_steps=100, num_samples=3, generator=torch.Generator().manual_seed(1))
    assert fc.mean.shape == (2, 100, 2) and fc.cov.shape == (2, 100, 2, 2)
    assert fc.samples.shape == (3, 2, 100, 16, 16) and fc.pixel_log_probs.shape == (2, 100, 16, 16, 256)
    assert fc.frame_nll is None
    for field in (fc.mean, fc.cov, fc.samples, fc.pixel_log_probs):
        assert bool(torch.isfinite(field).all())
    torch.testing.assert_close(fc.pixel_log_probs.logsumexp(-1), torch.zeros(2, 100, 16, 16), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="u must cover"):
        model.forecast(frames, u[:, :50], predict_steps=100)


def test_forecast_mixture_equals_explicit_average_across_chunks(monkeypatch):
    "The chunked logsumexp equals log of the mean of the decoded probabilities, however the samples are split."
    import replay_overshooting.image_models as image_models

    torch.manual_seed(0)
    model = ImageEKFModel(2, 2, 0, hidden=8).double()
    frames = moving_disks(2, 3).double()
    monkeypatch.setattr(image_models, "_DECODE_FRAMES", 8)  # 2 samples of B P = 4 frames per chunk
    with torch.no_grad():
        fc = model.forecast(frames, predict_steps=2, num_samples=5, generator=torch.Generator().manual_seed(2))
        latent = model.ekf.forecast(model.encode(frames)[0], predict_steps=2, num_samples=5,
                                    generator=torch.Generator().manual_seed(2))
        probs = torch.stack([model.decode(a).softmax(-1) for a in latent.samples]).mean(0)
    torch.testing.assert_close(fc.pixel_log_probs, probs.log(), rtol=0, atol=1e-10)
    torch.testing.assert_close(fc.samples, torch.stack([expected_image(model.decode(a)) for a in latent.samples]))


@pytest.mark.parametrize("objective, dynamics", [("vro", "discrete"), ("sro", "discrete"), ("lro", "discrete"),
                                                 ("none", "discrete"), ("s_ekf", "discrete"), ("vro", "continuous"),
                                                 ("sro", "ensemble")])
def test_gradients_reach_encoder_ekf_and_decoder(objective, dynamics):
    torch.manual_seed(0)
    model = ImageEKFModel(3, 2, 1, hidden=8, objective=objective, dynamics=dynamics, ode_method="rk4")
    loss, parts = model.loss(moving_disks(2, 5), torch.randn(2, 5, 1), iteration=500)
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert {"image_nll", "encoder_entropy", "ekf_loss"} <= parts.keys()
    for part in (model.encoder, model.ekf, model.decoder):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_loss_parts_match_their_formulas_in_float64():
    "Image NLL and entropy recomputed from the encoder and decoder with the same noise draw."
    torch.manual_seed(0)
    model = ImageEKFModel(2, 2, 0, hidden=8, objective="s_ekf").double()
    frames = moving_disks(2, 4).double()
    torch.manual_seed(5)
    loss, parts = model.loss(frames)
    torch.manual_seed(5)
    mean, var = model.encode(frames)
    a = mean + var.sqrt() * torch.randn_like(mean)
    nll = image_nll(model.decode(a), frames).mean()
    entropy = (0.5 * torch.log(2 * math.pi * math.e * var)).sum(-1).mean()
    one_step = model.ekf.filter(a).log_likelihoods.mean()
    assert parts["image_nll"].item() == pytest.approx(nll.item(), rel=1e-12)
    assert parts["encoder_entropy"].item() == pytest.approx(entropy.item(), rel=1e-12)
    assert loss.item() == pytest.approx((nll - entropy - one_step).item(), rel=1e-12)


def test_loss_falls_over_100_adam_steps():
    torch.manual_seed(0)
    frames = moving_disks(16, 12, seed=1)
    model = ImageEKFModel(3, 2, 0, hidden=16, objective="sro", burn_in=20)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for iteration in range(100):
        optimiser.zero_grad()
        loss, parts = model.loss(frames, iteration=iteration)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(math.isfinite(v) for v in losses)
    # Uniform levels cost 256 ln 256 ≈ 1420 nats per frame; the white background alone is worth most of it.
    assert end < 0.5 * start, (start, end)
    with torch.no_grad():
        fc = model.forecast(frames[:2, :5], predict_steps=100, num_samples=2)
    assert all(bool(torch.isfinite(field).all()) for field in fc if field is not None)
