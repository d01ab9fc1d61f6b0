"""The commands the documentation gives, run as a new user would type them, with only the budgets made tiny
(appended `-p`/`--`/`--set` options: iterations, data sizes, evaluation horizons, seeds).

Two sources: the README's bash blocks, run in README order in one directory; then the usage blocks of the
notebooks' markdown (`train`, `evaluate`, `reproduce`, `11_cli`), each notebook's in order in a fresh directory
(with the README directory's `runs/` copied in where a command evaluates runs, as its text assumes).

The `torchrun` lines run with 2 processes instead of 4 (the CI machine has 2 cores). The README's runs on a small
simulated data set written in MIT Push's layout (`write_push_sim`), as the loader's advice says to do without the
real files; a line that names the real MIT Push files must stop with that advice. The `reproduce` studies run one
seed for 2 iterations on small data (`--dataset-options`); the pendulum-image study runs two of its nine variants,
since scoring an untrained image model's forecasts takes about a minute a variant.

Left out: the two set-up commands' `pip install` (CI runs from an installed checkout, and the test command is this
suite)."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from replay_overshooting.push_sim import write_push_sim
from replay_overshooting.reproduce import STUDIES

ROOT = Path(__file__).resolve().parent.parent
TINY_DATA = {"vdp": "{num_sequences: 8, seq_len: 60, cache: false}",
             "push_sim": "{num_trajectories: 40, num_eval: 4}",
             "pendulum_images": "{num_sequences: 6, seq_len: 60, cache: false}"}
STUDY_DATA = {name: study.dataset for name, study in STUDIES.items()}
IMAGE_VARIANTS = ["le_ekf_kvae_pend_img", "planet_pend_img"]
TINY_EVALUATION = ["-p", "eval_filter_points", "[5]", "-p", "eval_predict_steps", "[10]"]
USAGE_NOTEBOOKS = ("train.ipynb", "evaluate.ipynb", "reproduce.ipynb", "11_cli.ipynb")


def _command_lines(markdown: str) -> list[str]:
    "Every command line of the bash blocks of `markdown`, without comments."
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    lines = [line.split("  #")[0].split(" # ")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def readme_commands() -> list[str]:
    "Every command line of the README's bash blocks."
    return _command_lines((ROOT / "README.md").read_text())


def notebook_commands(name: str) -> list[str]:
    "Every command line of the bash blocks in a notebook's markdown cells."
    cells = json.loads((ROOT / "nbs" / name).read_text())["cells"]
    return _command_lines("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"))


def tiny(command: str, data_dir: Path, push_dir: Path) -> list[str] | None:
    """The command as argv with tiny budgets appended, or None where it is left out (see the module docstring);
    `push_dir` holds simulated data in MIT Push's layout."""
    command = command.removeprefix('pip install -e ".[dev]" && ')
    if command.startswith("export ") or "pytest" in command:
        return None
    argv = [str(Path(a).expanduser()) if a.startswith("~") else a for a in shlex.split(command)]
    if argv[0] == "torchrun":
        argv[argv.index("--nproc_per_node") + 1] = "2"
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:], *_tiny_cli(argv, data_dir, push_dir)]
    if argv[:3] == ["python", "-m", "replay_overshooting.cli"]:
        return [sys.executable, *argv[1:], *_tiny_cli(argv, data_dir, push_dir)]
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
    if argv[:2] == ["papermill", "nbs/reproduce.ipynb"]:
        study = _parameters(argv)["study"]
        extra = ["-p", "seeds", "[0]", "-p", "max_iterations", "2", "-p", "data_dir", str(data_dir),
                 "-p", "dataset_options", TINY_DATA[STUDY_DATA[study]]]
        if study == "pendulum_images":
            extra += ["-p", "variants", json.dumps(IMAGE_VARIANTS)]
        return _papermill(argv, *extra)
    if argv[:3] == ["python", "-m", "replay_overshooting.reproduce"]:
        study = argv[3]
        extra = ["--seeds", "0", "--max-iterations", "2", "--data-dir", str(data_dir),
                 "--dataset-options", TINY_DATA[STUDY_DATA[study]]]
        if study == "pendulum_images":
            extra += ["--variants", *IMAGE_VARIANTS]
        return [sys.executable, *argv[1:], *extra]
    raise AssertionError(f"a documented command this test does not know how to run: {command!r}")


def _tiny_cli(argv: list[str], data_dir: Path, push_dir: Path) -> list[str]:
    "Options appended to a `replay_overshooting.cli` command: 2 iterations on small data (push_sim or MIT Push's layout)."
    if "dataset=push_sim" in argv:
        budget = {"data_dir": str(data_dir), "dataset_options": TINY_DATA["push_sim"]}
    elif "sro_dt_ekf_push" in argv:
        budget = {"data_dir": str(push_dir), "dataset_options": "{num_eval: 4, seq_len: 10}", "window": 6}
    else:
        budget = {"data_dir": str(data_dir), "dataset_options": TINY_DATA["vdp"]}
    budget.update(max_iterations=2, batch_size=4, checkpoint_every=1)
    return ["--no-progress", *(option for key, value in budget.items() for option in ("--set", f"{key}={value}"))]


def _papermill(argv: list[str], *extra: str) -> list[str]:
    "A `papermill nbs/…` command run by this interpreter from any directory, with `extra` options appended."
    return [sys.executable, "-m", "papermill", str(ROOT / argv[1]), *argv[2:], *extra]


def _parameters(argv: list[str]) -> dict:
    return {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "-p"}


def _run_all(commands: list[str], cwd: Path, data_dir: Path, push_dir: Path) -> list[str]:
    "Run each command in `cwd`, in order; returns those that ran. MIT Push lines must stop with the loader's advice."
    ran = []
    for command in commands:
        argv = tiny(command, data_dir, push_dir)
        if argv is None:
            continue
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
        if "mit_push" in command:  # the real files are not here: the run must stop with the loader's advice
            assert result.returncode != 0 and "DatasetNotFoundError" in result.stderr + result.stdout, command
            assert "-p dataset push_sim" in result.stderr + result.stdout
        else:
            assert result.returncode == 0, f"{command} (in {cwd})\n{result.stderr[-3000:]}"
        ran.append(command)
    return ran


def test_every_readme_command_runs(tmp_path):
    data_dir, push_dir, readme_dir = tmp_path / "data", tmp_path / "push_layout", tmp_path / "readme"
    write_push_sim(push_dir, num_trajectories=24, num_steps=12, seed=0)
    readme_dir.mkdir()
    ran = _run_all(readme_commands(), readme_dir, data_dir, push_dir)
    assert len(ran) >= 11, ran
    assert (readme_dir / "runs" / "sro_example" / "evaluation.md").is_file()  # the main job
    assert (readme_dir / "runs" / "sro_dt_ekf_push" / "model.pt").is_file()  # the torchrun line
    for study in STUDY_DATA:
        assert "not the paper's sizes" in (readme_dir / "results" / study / "table.md").read_text(), study

    for name in USAGE_NOTEBOOKS:
        commands = notebook_commands(name)
        assert commands, f"{name} shows no command"
        where = tmp_path / name.removesuffix(".ipynb")
        where.mkdir()
        if any("run_dirs" in command for command in commands):
            shutil.copytree(readme_dir / "runs", where / "runs")
        assert _run_all(commands, where, data_dir, push_dir) == commands, name
    assert (tmp_path / "11_cli" / "runs" / "push_ddp" / "model.pt").is_file()
    assert (tmp_path / "reproduce" / "results" / "pendulum_images" / "table.md").is_file()
