"""`train(config, seeds=[...])`: each vectorised seed equals its solo run; clipping, controls, resume, fallbacks, errors."""
import csv
import shutil

import pytest
import torch

import replay_overshooting.objectives as objectives
from replay_overshooting.backends import BACKEND_VARIABLE
from replay_overshooting.push_sim import write_push_sim
from replay_overshooting.training import EXPERIMENTS, get_experiment, load_run, train

SEEDS = [0, 1, 2]


def example(tmp_path, **changes):
    "The Van der Pol example, float64, on a tiny generated set."
    options = dict(max_iterations=5, batch_size=3, dtype="float64", device="cpu", out_dir=str(tmp_path),
                   dataset_options={"num_sequences": 7, "seq_len": 9, "cache": False})
    return get_experiment("example", **{**options, **changes})


def solo_on_the_reference_path(config, run_dir):
    "A solo run on the reference path (`backend=\"reference\"`), which is what every backend runs under `vmap`."
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BACKEND_VARIABLE, "reference")
        return train(config, progress=False, run_dir=run_dir)


def assert_close_runs(run, solo, rtol, atol):
    for key in ("loss", "grad_norm", "lr", "window"):
        torch.testing.assert_close(torch.tensor([r[key] for r in run.history], dtype=torch.float64),
                                   torch.tensor([r[key] for r in solo.history], dtype=torch.float64),
                                   rtol=rtol, atol=atol)
    solo_state = solo.model.state_dict()
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(value, solo_state[key], rtol=rtol, atol=atol)


def assert_equals_solo(runs, config, tmp_path, seeds=SEEDS, vectorised=True):
    """Each run equals its solo run `train(config.replace(seed=s))`.

    Under `vmap` every backend is the reference path (autograd through the plain step functions), while a solo
    run uses the fused nodes' hand-written backward. So a `vectorised` run equals, to round-off, the solo run on
    the reference path
    (measured: 3e-10 relative after 5 iterations, from batched reductions); against the real solo run the first
    iteration (same weights, same batch) agrees to ~1e-10 relative, and later ones drift apart as round-off
    does through Adam (a parameter whose gradient is near 0 moves by about lr·δg/ε, ε = 1e-8). Runs that
    are not vectorised take the solo run's path and equal it to round-off."""
    assert len(runs) == len(seeds)
    for seed, run in zip(seeds, runs):
        solo_config = config.replace(seed=seed)
        solo = train(solo_config, progress=False, run_dir=tmp_path / f"solo{seed}")
        if not vectorised:
            assert_close_runs(run, solo, rtol=1e-10, atol=1e-12)
            continue
        assert_close_runs(run, solo_on_the_reference_path(solo_config, tmp_path / f"plain{seed}"), rtol=1e-8,
                          atol=1e-10)
        for key in ("loss", "grad_norm"):
            assert run.history[0][key] == pytest.approx(solo.history[0][key], rel=1e-9)


def test_vectorised_seeds_equal_their_solo_runs(tmp_path):
    config = example(tmp_path)
    runs = train(config, seeds=SEEDS, progress=False)
    assert_equals_solo(runs, config, tmp_path)
    for seed, run in zip(SEEDS, runs):
        assert run.run_dir == tmp_path / "example" / f"seed{seed}"
        model, saved, _ = load_run(run.run_dir)
        assert saved == config.replace(seed=seed)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, run.model.state_dict()[key])
        with open(run.run_dir / "metrics.csv") as handle:
            losses = [float(row["loss"]) for row in csv.DictReader(handle)]
        assert losses == [row["loss"] for row in run.history]
    first_losses = {run.history[0]["loss"] for run in runs}
    assert len(first_losses) == len(SEEDS), "different seeds must give different models"


def test_clipping_is_per_seed(tmp_path):
    config = example(tmp_path, grad_clip=0.5, objective="sro", lr=2e-2)
    runs = train(config, seeds=SEEDS, progress=False)
    assert any(row["grad_norm"] > 0.5 for run in runs for row in run.history), "clipping must be active"
    assert_equals_solo(runs, config, tmp_path)


def test_controls_ramp_and_latent_replay(tmp_path):
    data_dir = tmp_path / "push"
    write_push_sim(data_dir, num_trajectories=30, num_steps=12, seed=0)
    config = EXPERIMENTS["dt_ekf_push"].replace(
        max_iterations=4, batch_size=3, window=8, ramp=2, dtype="float64", device="cpu", out_dir=str(tmp_path),
        data_dir=str(data_dir), dataset_options={"num_eval": 4, "seq_len": 10},
        model_options={"latent_dim": 3, "hidden": 8}).validate()
    runs = train(config, seeds=[5, 7], progress=False)
    assert [row["window"] for row in runs[0].history] == [2, 2, 3, 3]
    assert_equals_solo(runs, config, tmp_path, seeds=[5, 7])


def test_linear_ensemble_dynamics(tmp_path):
    config = example(tmp_path, max_iterations=3, model_options={"latent_dim": 2, "hidden": 8,
                                                              "dynamics": "ensemble", "ensemble_size": 3})
    runs = train(config, seeds=[0, 1], progress=False)
    assert_equals_solo(runs, config, tmp_path, seeds=[0, 1])


def test_failed_factorisation_falls_back_to_the_checked_path(tmp_path, monkeypatch):
    def always_fails(M):
        return torch.full_like(M, torch.nan)

    monkeypatch.setattr(objectives, "cholesky_or_nan", always_fails)  # every vectorised loss is NaN
    config = example(tmp_path, max_iterations=3)
    runs = train(config, seeds=SEEDS, progress=False)
    assert all(torch.isfinite(torch.tensor(row["loss"])) for run in runs for row in run.history)
    assert_equals_solo(runs, config, tmp_path, vectorised=False)  # every loss was recomputed on the solo path


def _whole_and_cut(tmp_path):
    """A 2-seed run to the end (`whole`), and the same run killed during iteration 3 (`tmp_path / "cut"`), whose
    checkpoints are at iteration 2; returns the config and the whole run's results."""
    config = example(tmp_path, max_iterations=6, checkpoint_every=2)
    whole = train(config, seeds=[0, 1], progress=False, run_dir=tmp_path / "whole")

    def stop(iteration, row):
        if iteration == 3 and row["seed"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, seeds=[0, 1], progress=False, run_dir=tmp_path / "cut", callback=stop)
    return config, whole


def test_resume_continues_every_seed(tmp_path):
    config, whole = _whole_and_cut(tmp_path)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train(config, seeds=[0, 1], progress=False, run_dir=tmp_path / "cut")
    shutil.copytree(tmp_path / "cut" / "seed1", tmp_path / "solo_cut")  # a seed's checkpoint is a solo one
    solo = train(config.replace(seed=1), progress=False, run_dir=tmp_path / "solo_cut", resume=True)
    resumed = train(config, seeds=[0, 1], progress=False, run_dir=tmp_path / "cut", resume=True)
    assert resumed[0].history[0]["iteration"] == solo.history[0]["iteration"] == 2
    for cut, full, tolerance in zip([*resumed, solo], [*whole, whole[1]], [1e-12, 1e-12, 1e-8]):
        with open(cut.run_dir / "metrics.csv") as handle:
            losses = [float(row["loss"]) for row in csv.DictReader(handle)]
        torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                                   torch.tensor([r["loss"] for r in full.history], dtype=torch.float64),
                                   rtol=tolerance, atol=0.0)


def test_seeds_stopped_at_different_iterations_each_resume(tmp_path):
    config, whole = _whole_and_cut(tmp_path)
    train(config.replace(seed=0), progress=False, run_dir=tmp_path / "cut" / "seed0", resume=True)  # seed 0 ahead
    resumed = train(config, seeds=[0, 1], progress=False, run_dir=tmp_path / "cut", resume=True)
    assert resumed[0].history == [] and resumed[1].history[0]["iteration"] == 2  # each from its own checkpoint
    for seed, full in zip([0, 1], whole):
        with open(tmp_path / "cut" / f"seed{seed}" / "metrics.csv") as handle:
            losses = [float(row["loss"]) for row in csv.DictReader(handle)]
        torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                                   torch.tensor([r["loss"] for r in full.history], dtype=torch.float64),
                                   rtol=1e-8, atol=0.0)


def test_continuous_time_falls_back_to_one_seed_after_another(tmp_path):
    config = example(tmp_path, max_iterations=1, model_options={"latent_dim": 2, "hidden": 8,
                                                              "dynamics": "continuous", "dt": 0.1})
    runs = train(config, seeds=[0, 1], progress=False)
    assert_equals_solo(runs, config, tmp_path, seeds=[0, 1], vectorised=False)


@pytest.mark.parametrize("seeds, message", [
    ([], "non-empty list"), (3, "non-empty list"), ([0, 1, 0], "distinct"), ([0, 1.5], "must be ints"),
    ([True, 2], "must be ints"), (["0"], "must be ints"),
])
def test_bad_seeds_are_refused(seeds, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(example(tmp_path), seeds=seeds, progress=False)
