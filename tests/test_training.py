"""Training: every registered experiment runs on tiny data, resume reproduces the loss curve, bad configs fail early."""
import csv
import json

import pytest
import torch

from replay_overshooting.push_sim import write_push_sim
from replay_overshooting.training import EXPERIMENTS, ExperimentConfig, get_experiment, load_run, train


@pytest.fixture(scope="module")
def push_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("push")
    write_push_sim(directory, num_trajectories=48, num_steps=12, seed=0)
    return directory


def tiny(name, push_dir, tmp_path, **changes):
    "The registered experiment `name` shrunk to 2 iterations on tiny data."
    config = EXPERIMENTS[name]
    options = {"num_eval": 4, "seq_len": 10} if config.dataset == "mit_push" else {"num_sequences": 6, "seq_len": 12, "cache": False}
    data_dir = str(push_dir) if config.dataset == "mit_push" else None
    defaults = dict(max_iterations=2, batch_size=2, window=6, dataset_options=options, data_dir=data_dir,
                    out_dir=str(tmp_path), device="cpu")
    return config.replace(**{**defaults, **changes}).validate()


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_runs_two_iterations(name, push_dir, tmp_path):
    result = train(tiny(name, push_dir, tmp_path), progress=False)
    assert [row["iteration"] for row in result.history] == [0, 1]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history)
    saved = ExperimentConfig.load(result.run_dir / "config.json")
    assert saved == tiny(name, push_dir, tmp_path)
    model, config, test = load_run(result.run_dir)
    for key, value in model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key]), key


def test_load_run_restores_float64_weights_exactly(tmp_path):
    "The weights are cast to the run's dtype before loading: float64 ones loaded into float32 would be rounded."
    config = get_experiment("example", max_iterations=2, dtype="float64", out_dir=str(tmp_path), device="cpu",
                            dataset_options={"num_sequences": 4, "seq_len": 11, "cache": False})
    result = train(config, progress=False)
    model, _, _ = load_run(result.run_dir)
    for key, value in result.model.state_dict().items():
        assert model.state_dict()[key].dtype == torch.float64
        assert torch.equal(model.state_dict()[key], value), key


def test_registry_covers_the_paper():
    base = [n for n in EXPERIMENTS if not n.startswith(("sro_", "s_ekf_"))]
    assert len(base) == 18  # the VdP example, the 16 experiments of the paper's training protocol and the pendulum-latent DT-EKF
    for name in base:
        config = EXPERIMENTS[name]
        has_variants = config.model in ("ekf", "image_ekf") and config.objective != "none"
        assert (f"sro_{name}" in EXPERIMENTS) == has_variants
        assert (f"s_ekf_{name}" in EXPERIMENTS) == has_variants
    assert EXPERIMENTS["s_ekf_dt_ekf_push"].alpha == 1.0


def test_kill_and_resume_reproduces_the_curve(tmp_path):
    config = get_experiment("example", max_iterations=9, checkpoint_every=3, batch_size=4, out_dir=str(tmp_path),
                            dataset_options={"num_sequences": 12, "seq_len": 21, "cache": False}, device="cpu")
    uninterrupted = train(config, progress=False, run_dir=tmp_path / "a")

    def kill(iteration, row):
        if iteration == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, run_dir=tmp_path / "b", callback=kill)
    train(config, progress=False, run_dir=tmp_path / "b", resume=True)
    with open(tmp_path / "b" / "metrics.csv") as handle:
        resumed = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert resumed == [row["loss"] for row in uninterrupted.history]
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_resume_refuses_a_different_config(tmp_path):
    config = get_experiment("example", max_iterations=2, out_dir=str(tmp_path), device="cpu",
                            dataset_options={"num_sequences": 8, "seq_len": 11, "cache": False})
    train(config, progress=False)
    with pytest.raises(ValueError, match="different config"):
        train(config.replace(lr=1e-4), progress=False, resume=True)


@pytest.mark.parametrize("changes, message", [
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(objective="elbo"), "unknown objective 'elbo'"),
    (dict(model="transformer"), "unknown model 'transformer'"),
    (dict(batch_size=0), "must be positive"),
    (dict(max_iterations=-1), "must be positive"),
    (dict(alpha=1.5), "alpha must be in"),
    (dict(lr_schedule="cosine"), "unknown lr_schedule"),
    (dict(device="cuda:7"), "device"),
    (dict(dtype="float16"), "dtype"),
    (dict(beta=-1.0), "must not be negative: {'beta': -1.0}"),
    (dict(kl_anneal=-5), "must not be negative: {'kl_anneal': -5}"),
    (dict(lr="abc"), "config field lr must be float, got 'abc'"),
    (dict(batch_size="4"), "config field batch_size must be int, got '4'"),
    (dict(epochs=0.5), "config field epochs must be int, got 0.5"),
    (dict(seed="0"), "config field seed must be int, got '0'"),
])
def test_bad_configs_fail_before_work(changes, message):
    if changes.get("device", "").startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match=message):
        get_experiment("example", **changes)


def test_unknown_experiment_suggests_the_nearest_and_lists_the_registry():
    with pytest.raises(ValueError, match="did you mean 'dt_ekf_push'\\? Choose one of: .*sro_dt_ekf_push"):
        get_experiment("dt_ekf_pushh")


def test_window_longer_than_data_fails_before_training(tmp_path):
    config = get_experiment("example", window=500, out_dir=str(tmp_path), device="cpu",
                            dataset_options={"num_sequences": 4, "seq_len": 11, "cache": False})
    with pytest.raises(ValueError, match="window 500 is longer"):
        train(config, progress=False)
    assert not (tmp_path / "example").exists()


def test_config_round_trips_through_json_and_yaml(tmp_path):
    config = get_experiment("le_ekf_push", epochs=3, grad_clip=10.0)
    for suffix in (".json", ".yaml"):
        config.save(tmp_path / f"c{suffix}")
        assert ExperimentConfig.load(tmp_path / f"c{suffix}") == config
    assert json.loads((tmp_path / "c.json").read_text())["model_options"]["ensemble_size"] == 100


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    config = get_experiment("example", max_iterations=2, out_dir=str(tmp_path), device="cpu", tensorboard=True,
                            dataset_options={"num_sequences": 4, "seq_len": 11, "cache": False})
    result = train(config, progress=False)
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_run_on_custom_data_needs_its_test_split_to_reload(tmp_path):
    from replay_overshooting.custom import dataset_from_arrays
    generator = torch.Generator().manual_seed(0)
    train_set = dataset_from_arrays(torch.randn(6, 12, 2, generator=generator).numpy(), name="mine")
    test_set = dataset_from_arrays(torch.randn(3, 12, 2, generator=generator).numpy(), name="mine", split="test",
                                   normalization=train_set.normalization)
    config = get_experiment("example", max_iterations=2, out_dir=str(tmp_path), device="cpu", name="mine")
    result = train(config, progress=False, dataset=train_set)
    assert json.loads((result.run_dir / "custom_data.json").read_text())["name"] == "mine"
    with pytest.raises(ValueError, match="custom data 'mine'.*load_run\\(run_dir, dataset=test_set\\)"):
        load_run(result.run_dir)
    model, _, test = load_run(result.run_dir, dataset=test_set)
    assert test is test_set
    for key, value in model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key])


@pytest.mark.parametrize("hold", [True, False])
def test_malloc_is_changed_only_when_asked(hold, tmp_path, monkeypatch):
    "glibc's malloc settings are process-wide and cannot be read back: `train` sets them only with `hold_freed_memory`."
    from replay_overshooting import native
    calls = []
    monkeypatch.setattr(native, "hold_freed_memory", lambda: calls.append(True) or True)
    config = get_experiment("example", max_iterations=1, out_dir=str(tmp_path), device="cpu",
                            dataset_options={"num_sequences": 4, "seq_len": 11, "cache": False})
    train(config, progress=False, hold_freed_memory=hold)
    assert calls == ([True] if hold else [])
