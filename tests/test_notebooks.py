"""The papermill experiment notebooks (train, evaluate, reproduce) run end to end on tiny data, a missing dataset
stops with a useful message, and every other notebook that runs top to bottom runs under plain papermill, one at a
time (run two at a time by papermill subprocesses, one hung waiting on its kernel in a trial)."""
import csv
import json
from pathlib import Path

import papermill
import pytest

NBS = Path(__file__).resolve().parent.parent / "nbs"
TINY_VDP = {"num_sequences": 8, "seq_len": 21, "cache": False}


def stdout_of(notebook: Path) -> str:
    "Everything the executed notebook printed."
    cells = json.loads(notebook.read_text())["cells"]
    return "".join("".join(output.get("text", "")) for cell in cells for output in cell.get("outputs", [])
                   if output.get("name") == "stdout")


def run(name: str, out: Path, **parameters) -> str:
    papermill.execute_notebook(str(NBS / name), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(out.parent), progress_bar=False)
    return stdout_of(out)


@pytest.mark.parametrize("path", sorted(NBS.glob("*.ipynb")), ids=lambda path: path.name)
def test_every_notebook_names_its_kernel(path):
    kernelspec = json.loads(path.read_text())["metadata"].get("kernelspec") or {}
    assert kernelspec.get("name") == "python3", f"{path.name} has no python3 kernelspec: papermill cannot run it"


def _runs_as_a_whole(path: Path) -> bool:
    """Whether a notebook is meant to run top to bottom as it stands: not a papermill experiment notebook (those
    run with parameters above) and without `#| eval: false` cells (a command-line entry point or a benchmark,
    which nbdev_test skips and papermill would run)."""
    text = path.read_text()
    return "skip_exec" not in text and "eval: false" not in text


PLAIN_NOTEBOOKS = [path.name for path in sorted(NBS.glob("*.ipynb")) if _runs_as_a_whole(path)]


def test_the_plain_papermill_set_is_most_notebooks():
    assert {"00_gaussian.ipynb", "01_ekf.ipynb", "index.ipynb"} <= set(PLAIN_NOTEBOOKS)
    assert len(PLAIN_NOTEBOOKS) >= len(list(NBS.glob("*.ipynb"))) - 6, PLAIN_NOTEBOOKS


@pytest.mark.parametrize("name", PLAIN_NOTEBOOKS)
def test_notebook_runs_under_plain_papermill(name, tmp_path):
    papermill.execute_notebook(str(NBS / name), str(tmp_path / name), cwd=str(NBS), progress_bar=False)
    cells = json.loads((tmp_path / name).read_text())["cells"]
    assert all(cell.get("execution_count") for cell in cells if cell["cell_type"] == "code" and "".join(cell["source"]).strip())


@pytest.mark.parametrize("name", ["train.ipynb", "evaluate.ipynb", "reproduce.ipynb"])
def test_parameters_cell_is_tagged(name):
    cells = json.loads((NBS / name).read_text())["cells"]
    tagged = [cell for cell in cells if "parameters" in cell["metadata"].get("tags", [])]
    assert len(tagged) == 1, (f"{name} needs exactly one cell tagged 'parameters' for papermill; nbdev_clean strips "
                              "cell tags unless settings.ini has `allowed_cell_metadata_keys = tags`")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A 3-iteration Van der Pol run made by train.ipynb: (run directory, what the notebook printed)."
    work = tmp_path_factory.mktemp("train")
    printed = run("train.ipynb", work / "train_out.ipynb", dataset="vdp", max_iterations=3, batch_size=4,
                  dataset_options=json.dumps(TINY_VDP), out_dir=str(work / "runs"), device="cpu",
                  eval_filter_points="[5]", eval_predict_steps=10)  # as `papermill -p` passes them: text
    return work / "runs" / "sro_example", printed


def test_train_notebook_trains_evaluates_and_reports(trained):
    run_dir, printed = trained
    for file in ("config.json", "metrics.csv", "checkpoint.pt", "model.pt", "evaluation.csv", "evaluation.md"):
        assert (run_dir / file).is_file(), file
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["max_iterations"], config["batch_size"], config["dataset_options"]) == (3, 4, TINY_VDP)
    with (run_dir / "metrics.csv").open() as handle:
        assert [int(row["iteration"]) for row in csv.DictReader(handle)] == [0, 1, 2]
    assert '"max_iterations": 3' in printed  # the config is printed
    assert "| name | dataset | F | P | NLL | MAE | sequences |" in printed
    assert "| sro_example | vdp | 5 | 10 |" in printed
    assert "| hold-last baseline | vdp | 5 | 10 | — |" in printed
    assert f"run directory: {run_dir}" in printed


def test_evaluate_notebook_compares_runs(trained, tmp_path):
    run_dir, _ = trained
    printed = run("evaluate.ipynb", tmp_path / "evaluate_out.ipynb", run_dirs=json.dumps([str(run_dir)]), filter_points=5,
                  predict_steps=10, out_dir=str(tmp_path / "evaluations"))
    assert "| sro_example | vdp | 5 | 10 |" in printed
    assert "| run | dataset | F | P | NLL | MAE | sequences | paper row |" in printed
    assert (tmp_path / "evaluations" / "sro_example" / "evaluation.csv").is_file()


def test_a_bad_parameter_is_named_before_any_work(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        run("train.ipynb", tmp_path / "bad_out.ipynb", max_iterations="abc", out_dir=str(tmp_path / "runs"))
    assert "parameter max_iterations must be an integer, got 'abc'" in str(caught.value)
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        run("train.ipynb", tmp_path / "bad_out.ipynb", experiment="exmple", out_dir=str(tmp_path / "runs"))
    assert "did you mean 'example'?" in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_missing_push_data_says_how_to_use_push_sim(tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        run("train.ipynb", tmp_path / "push_out.ipynb", dataset="mit_push", data_dir=str(empty), max_iterations=2,
            out_dir=str(tmp_path / "runs"))
    message = str(caught.value)
    assert "DatasetNotFoundError" in message and "kloss_train0.hdf5" in message
    assert "-p dataset push_sim" in message
    assert not (tmp_path / "runs").exists()  # stopped before any training


def test_reproduce_notebook_writes_a_study(tmp_path):
    printed = run("reproduce.ipynb", tmp_path / "reproduce_out.ipynb", study="vdp", seeds="[0]", variants='["example"]',
                  max_iterations=2, out_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "data"),
                  dataset_options="{num_sequences: 6, seq_len: 60, cache: false}")
    study = tmp_path / "results" / "vdp"
    assert (study / "runs" / "example_seed0.csv").is_file() and (study / "configs" / "example.json").is_file()
    assert "| VRO-EKF (`example`) | 1 |" in printed and "hold-last baseline" in printed
    assert "study vdp: seeds [0], variants ['example'], max_iterations 2" in printed
    assert "not the paper's sizes" in printed
