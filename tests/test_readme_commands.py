"""The README's commands, run as a new user would type them, in README order in one directory, with only the
budgets made tiny (appended `-p`/`--` options: iterations, data sizes, evaluation horizons, seeds).

The `torchrun` line runs with 2 processes instead of 4 (the CI machine has 2 cores), on a small simulated data set
written in MIT Push's layout (`write_push_sim`), as the loader's advice says to do without the real files.

Left out, with the reason: the two set-up commands' `pip install` (CI runs from an installed checkout, and the test
command is this suite); the push_sim, pendulum_images and ablation studies of `reproduce` (their data sets are
generated at full size, minutes each; the reproduce command is exercised with the vdp study, and
`tests/test_notebooks.py` and `12_reproduce` cover the others' code)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

from replay_overshooting.push_sim import write_push_sim

ROOT = Path(__file__).resolve().parent.parent
TINY_DATA = {"vdp": "{num_sequences: 8, seq_len: 46, cache: false}",
             "push_sim": "{num_trajectories: 40, num_eval: 4}",
             "pendulum_images": "{num_sequences: 6, seq_len: 40, cache: false}"}
TINY_EVALUATION = ["-p", "eval_filter_points", "[5]", "-p", "eval_predict_steps", "[10]"]


def readme_commands() -> list[str]:
    "Every command line of the README's bash blocks, without comments."
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("  #")[0].split(" # ")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def tiny(command: str, data_dir: Path, push_dir: Path) -> list[str] | None:
    """The command as argv with tiny budgets appended, or None where it is left out (see the module docstring);
    `push_dir` holds simulated data in MIT Push's layout."""
    command = command.removeprefix('pip install -e ".[dev]" && ')
    if command.startswith("export ") or "pytest" in command:
        return None
    argv = shlex.split(command)
    if argv[0] == "torchrun":
        argv[argv.index("--nproc_per_node") + 1] = "2"
        budget = {"data_dir": str(push_dir), "max_iterations": 2, "batch_size": 4, "window": 6, "checkpoint_every": 1,
                  "dataset_options": "{num_eval: 4, seq_len: 10}"}
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:], "--no-progress",
                *(option for key, value in budget.items() for option in ("--set", f"{key}={value}"))]
    argv = [str(Path(a).expanduser()) if a.startswith("~") else a for a in argv]
    if argv[:2] == ["papermill", "nbs/train.ipynb"]:
        parameters = _parameters(argv)
        experiment = parameters.get("experiment", "")
        dataset = "pendulum_images" if "pend_img" in experiment else parameters.get("dataset", "vdp")
        extra = ["-p", "dataset_options", TINY_DATA.get(dataset, TINY_DATA["vdp"]), *TINY_EVALUATION]
        if "max_iterations" not in parameters:
            extra += ["-p", "max_iterations", "2"]
        if "data_dir" not in parameters:
            extra += ["-p", "data_dir", str(data_dir)]
        return _papermill(argv, *extra, "-p", "batch_size", "4")
    if argv[:2] == ["papermill", "nbs/evaluate.ipynb"]:
        return _papermill(argv, "-p", "predict_steps", "10")
    if argv[:3] == ["python", "-m", "replay_overshooting.reproduce"]:
        if argv[3] != "vdp":
            return None
        return [sys.executable, *argv[1:], "--max-iterations", "2", "--seeds", "0", "--variants", "example",
                "--data-dir", str(data_dir), "--out-dir", "results"]
    raise AssertionError(f"a README command this test does not know how to run: {command!r}")


def _papermill(argv: list[str], *extra: str) -> list[str]:
    "A `papermill nbs/…` command run by this interpreter from any directory, with `extra` options appended."
    return [sys.executable, "-m", "papermill", str(ROOT / argv[1]), *argv[2:], *extra]


def _parameters(argv: list[str]) -> dict:
    return {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "-p"}


def test_every_readme_command_runs(tmp_path):
    data_dir, push_dir = tmp_path / "data", tmp_path / "push_layout"
    write_push_sim(push_dir, num_trajectories=24, num_steps=12, seed=0)
    ran = []
    for command in readme_commands():
        argv = tiny(command, data_dir, push_dir)
        if argv is None:
            continue
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        if "mit_push" in command:  # the real files are not here: the run must stop with the loader's advice
            assert result.returncode != 0 and "DatasetNotFoundError" in result.stderr + result.stdout, command
            assert "-p dataset push_sim" in result.stderr + result.stdout
        else:
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        ran.append(command)
    assert len(ran) >= 8, ran
    assert (tmp_path / "runs" / "sro_example" / "evaluation.md").is_file()  # the main job
    assert (tmp_path / "runs" / "sro_dt_ekf_push" / "model.pt").is_file()  # the torchrun line
    assert (tmp_path / "results" / "vdp" / "table.md").is_file()
