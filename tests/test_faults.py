"""Faults a run must survive: a second writer, divergence, damaged or edited files, interrupted and failed writes,
the umask, and forecasts that stop being Gaussians. Each ends in a clear error that names the file and the way out,
or in a correct result.

Where the other cases of the fault-injection trial are tested:
- a flipped value inside a cached HDF5 array, and caches from before checksums: `nbs/05_datasets.ipynb`;
- seeds whose checkpoints stop at different iterations: `tests/test_multiseed.py`;
- unchecked filter, smoother and predictor inputs (NaN mean, P = -I, asymmetric or NaN Q, float16, numpy y):
  `tests/test_ekf.py`;
- `dataset_from_arrays` values beyond float32, zero or NaN spread, N = 0, window 2.5, dt = inf:
  `nbs/05e_custom.ipynb`;
- config types and ranges (lr "abc", batch_size "4", epochs 0.5, beta -1, kl_anneal -5, seed "0"):
  `tests/test_training.py`.
"""
import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from replay_overshooting.evaluation import evaluate
from replay_overshooting.storage import LockedError, exclusive_lock
from replay_overshooting.training import (
    RunDamagedError, TrainingDivergedError, get_experiment, load_run, train)

TINY = dict(max_iterations=12, checkpoint_every=4, batch_size=4, dataset_options={"num_sequences": 16, "cache": False})


def tiny(**changes):
    return get_experiment("example", **{**TINY, **changes})


def losses(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(int(row["iteration"]), float(row["loss"])) for row in csv.DictReader(handle)]


class Killed(Exception):
    pass


def killed_at(iteration):
    def callback(i, row):
        if i == iteration:
            raise Killed
    return callback


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    "An uninterrupted 12-iteration run."
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(), run_dir=run_dir, progress=False)
    return run_dir


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    with exclusive_lock(run_dir / ".lock", "test"):
        code = textwrap.dedent(f"""
            from replay_overshooting.training import get_experiment, train
            train(get_experiment("example", **{TINY!r}), run_dir={str(run_dir)!r}, progress=False)
        """)
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0
    assert f"run directory {run_dir} is being written by another process (pid {os.getpid()})" in other.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # it wrote nothing
    train(tiny(), run_dir=run_dir, progress=False)  # the lock is gone with its holder's block
    with exclusive_lock(run_dir / ".lock", "test"), pytest.raises(LockedError):
        train(tiny(), run_dir=run_dir, resume=True, progress=False)


@pytest.mark.parametrize("experiment", ["example", "planet_push", "gssm_push"])
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(experiment, tmp_path):
    run_dir = tmp_path / experiment
    config = get_experiment(experiment, dataset="vdp", lr=1e6, lr_schedule="constant", grad_clip=None,
                            max_iterations=30, batch_size=4, checkpoint_every=1,
                            dataset_options={"num_sequences": 8, "cache": False})
    with pytest.raises(TrainingDivergedError, match=r"training diverged at iteration \d+ \(learning rate 1e\+06\)"
                       r".*Lower the learning rate"):
        train(config, run_dir=run_dir, progress=False)
    assert not (run_dir / "model.pt").exists()
    if (run_dir / "checkpoint.pt").exists():
        state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
        assert all(bool(torch.isfinite(value).all()) for value in state["model"].values())


def test_a_truncated_checkpoint_is_named_and_restart_moves_the_run_aside(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny(), run_dir=run_dir, progress=False, callback=killed_at(6))
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(RunDamagedError, match=f"{checkpoint}.*restart=True"):
        train(tiny(), run_dir=run_dir, resume=True, progress=False)
    with pytest.raises(FileExistsError, match="restart=True"):
        train(tiny(), run_dir=run_dir, progress=False)
    train(tiny(), run_dir=run_dir, restart=True, progress=False)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "checkpoint.pt").stat().st_size == 1000  # kept, not deleted
    assert [i for i, _ in losses(run_dir)] == list(range(12))


def test_damaged_or_edited_files_are_refused_by_name(finished, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(finished), str(copy)], check=True)
    weights = copy / "model.pt"
    damaged = bytearray(weights.read_bytes())
    damaged[-200:-196] = b"\xff\xff\x7f\x7f"  # inside the weights: torch.load alone would not notice
    weights.write_bytes(bytes(damaged))
    with pytest.raises(RunDamagedError, match=f"{weights} is not the file training wrote"):
        load_run(copy)
    subprocess.run(["cp", str(finished / "model.pt"), str(weights)], check=True)
    load_run(copy)
    config = json.loads((copy / "config.json").read_text())
    config["dataset_options"]["seq_len"] = 30
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(RunDamagedError, match="config.json is not the file training wrote"):
        evaluate(copy)


def test_a_metrics_row_cut_by_a_kill_is_dropped_on_resume(finished, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny(), run_dir=run_dir, progress=False, callback=killed_at(6))
    metrics = run_dir / "metrics.csv"
    metrics.write_text(metrics.read_text()[:-25])  # the last row, iteration 5, cut mid-number
    (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"left by a kill -9 during a save")
    train(tiny(), run_dir=run_dir, resume=True, progress=False)
    assert losses(run_dir) == losses(finished)
    assert not list(run_dir.glob("*.tmp"))


def test_a_metrics_file_missing_rows_before_the_checkpoint_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        train(tiny(), run_dir=run_dir, progress=False, callback=killed_at(6))
    metrics = run_dir / "metrics.csv"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:3]))  # iterations 0 and 1 only; the checkpoint is at 4
    with pytest.raises(RunDamagedError, match=r"does not hold iterations 0\.\.3"):
        train(tiny(), run_dir=run_dir, resume=True, progress=False)


def test_files_honour_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        train(tiny(max_iterations=2), run_dir=tmp_path / "run", progress=False)
    finally:
        os.umask(previous)
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "model.pt", "manifest.json"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as on Linux")
def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path):
    run_dir = tmp_path / "run"
    code = textwrap.dedent(f"""
        import resource, signal
        from replay_overshooting.training import get_experiment, train
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # files may grow to 20 kB, as on a full disk
        train(get_experiment("example", **{TINY!r}), run_dir={str(run_dir)!r}, progress=False)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "File too large while writing" in result.stderr and str(run_dir) in result.stderr, result.stderr[-2000:]
    assert not list(run_dir.glob(".*.tmp"))


def test_a_forecast_that_stops_being_a_gaussian_is_warned_and_marked(tmp_path):
    "Item 10: a long float32 open-loop forecast whose covariance loses positive definiteness is not a plain number."
    from replay_overshooting.data import SequenceDataset
    from replay_overshooting.models import EKFModel, UnstableForecastWarning
    torch.manual_seed(0)
    model = EKFModel(2, 2, hidden=16)  # untrained; its dynamics weights doubled, so the state stretches each step
    with torch.no_grad():
        for weight in model.dynamics.parameters():
            weight.mul_(2)
    data = SequenceDataset(name="drift", split="test", y=torch.randn(4, 205, 2), u=torch.zeros(4, 205, 0), dt=1.0,
                           window_length=205, normalization={}, source="noise")
    with pytest.warns(UnstableForecastWarning, match="4 of 4 test sequences"):
        rows = evaluate(model, data, filter_points=5, predict_steps=(50, 200), num_samples=2, out_dir=tmp_path)
    assert [r["unstable_sequences"] for r in rows[:2]] == [0, 4]
    table = (tmp_path / "evaluation.md").read_text()
    assert table.count(" † |") == 1 and "EKFModel at F = 5, P = 200: 4 of 4" in table, table


@pytest.mark.parametrize("integrator, message", [("dormand_prince", "the Dormand–Prince solve stopped: the step size "
                                                                    "underflowed"),
                                                 ("torchdiffeq", "torchdiffeq's dopri5 solve stopped: underflow in dt")])
def test_a_failed_ode_solve_stops_training_as_a_divergence(integrator, message, tmp_path):
    """A continuous-time model whose solver cannot meet its tolerances (here 1e-300: every step is rejected until
    the step size underflows) stops with `TrainingDivergedError`, naming the solver, and writes no model."""
    run_dir = tmp_path / "ct"
    base = get_experiment("ct_ekf_push")
    config = get_experiment("ct_ekf_push", dataset="vdp", max_iterations=3, batch_size=4,
                            dataset_options={"num_sequences": 8, "cache": False},
                            model_options={**base.model_options, "ode_integrator": integrator,
                                           "rtol": 1e-300, "atol": 1e-300})
    with pytest.raises(TrainingDivergedError, match=r"training diverged at iteration 0 .*" + message):
        train(config, run_dir=run_dir, progress=False)
    assert not (run_dir / "model.pt").exists()
