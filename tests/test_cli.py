"""The command line trains a registered experiment with overrides, and rejects bad ones before any work."""
import subprocess
import sys

from replay_overshooting.training import ExperimentConfig


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "replay_overshooting.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_trains_with_overrides(tmp_path):
    completed = run_cli("example", "--no-progress", "--set", "max_iterations=2", "--set", f"out_dir={tmp_path}",
                        "--set", "dataset_options={num_sequences: 4, seq_len: 11, cache: false}",
                        "--set", "lr=1e-3", "--set", "device=cpu")
    assert completed.returncode == 0, completed.stderr[-2000:]
    run_dir = tmp_path / "example"
    assert f"run directory: {run_dir}" in completed.stdout
    config = ExperimentConfig.load(run_dir / "config.json")
    assert (config.max_iterations, config.lr, config.dataset_options["num_sequences"]) == (2, 1e-3, 4)
    assert (run_dir / "model.pt").exists()


def test_cli_lists_and_rejects():
    listed = run_cli("--list")
    assert listed.returncode == 0 and "sro_dt_ekf_push" in listed.stdout
    unknown = run_cli("dt_ekf_pushh")
    assert unknown.returncode == 2 and "unknown experiment 'dt_ekf_pushh'" in unknown.stderr
    bad = run_cli("example", "--set", "batch_size=0")
    assert bad.returncode == 2 and "must be positive" in bad.stderr
    malformed = run_cli("example", "--set", "epochs")
    assert malformed.returncode != 0 and "key=value" in malformed.stderr
