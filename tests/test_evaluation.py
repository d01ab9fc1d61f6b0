"""Evaluation: numbers equal a direct computation for real models, run directories round-trip, compare() shows the paper, bad inputs fail clearly."""
import math

import pytest
import torch

from replay_overshooting.baselines import GSSM, RSSM
from replay_overshooting.data import SequenceDataset, load_dataset
from replay_overshooting.evaluation import PUBLISHED, compare, evaluate, read_evaluation
from replay_overshooting.image_models import ImageEKFModel
from replay_overshooting.models import EKFModel
from replay_overshooting.training import get_experiment, load_run, train


def dense_gaussian_nll(y, mean, cov):
    "−log N(y; mean, cov) per leading index, with an explicit inverse and determinant (independent of Cholesky)."
    d = (y - mean).unsqueeze(-1)
    quadratic = (d.mT @ torch.linalg.inv(cov) @ d).squeeze(-1).squeeze(-1)
    return 0.5 * (quadratic + torch.logdet(2 * math.pi * cov))


def vector_dataset(num_sequences=5, steps=10, obs_dim=2, ctrl_dim=1, seed=0):
    stream = torch.Generator().manual_seed(seed)
    y = torch.randn(num_sequences, steps, obs_dim, generator=stream, dtype=torch.float64)
    u = torch.randn(num_sequences, steps, ctrl_dim, generator=stream, dtype=torch.float64)
    return SequenceDataset(name="toy", split="test", y=y, u=u, dt=0.1, window_length=steps, normalization={},
                           source="random numbers for tests")


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    "A 3-iteration Van der Pol run: 8 test sequences of 40 steps."
    config = get_experiment("example", max_iterations=3, out_dir=str(tmp_path_factory.mktemp("runs")), device="cpu",
                            dataset_options={"num_sequences": 8, "seq_len": 40, "cache": False})
    return train(config, progress=False).run_dir


def test_ekf_numbers_equal_a_direct_forecast():
    torch.manual_seed(0)
    model = EKFModel(3, 2, 1, hidden=8).double()
    data = vector_dataset()
    F, P = 4, 5
    rows = evaluate(model, data, filter_points=F, predict_steps=P, num_samples=7, seed=3, batch_size=len(data))
    batched = evaluate(model, data, filter_points=F, predict_steps=P, num_samples=7, seed=3, batch_size=2)
    with torch.no_grad():
        forecast = model.forecast(data.y[:, :F], data.u[:, :F + P], predict_steps=P, num_samples=7,
                                  generator=torch.Generator().manual_seed(3))
    truth = data.y[:, F:F + P]
    nll = dense_gaussian_nll(truth, forecast.mean, forecast.cov).mean().item()
    mae = (forecast.samples - truth).abs().mean().item()
    assert rows[0]["nll"] == pytest.approx(nll, rel=1e-10)
    assert rows[0]["mae"] == pytest.approx(mae, rel=1e-12)
    assert batched[0]["nll"] == pytest.approx(nll, rel=1e-10)  # the EKF's NLL does not depend on the samples
    assert rows[0] | {"nll": 0, "mae": 0} == {"name": "EKFModel", "dataset": "toy", "filter_points": F,
                                              "predict_steps": P, "nll": 0, "mae": 0, "num_sequences": 5,
                                              "unstable_sequences": 0}


def test_image_ekf_nll_is_the_pixel_sum_of_its_forecast():
    torch.manual_seed(0)
    frames = load_dataset("pendulum_images", "test", num_sequences=3, seq_len=8, cache=False)
    model = ImageEKFModel(3, 2, 1, hidden=8, channels=4).double()
    F, P = 3, 4
    rows = evaluate(model, frames, filter_points=F, predict_steps=P, num_samples=5, seed=1, batch_size=3)
    images = frames.y.double() / 255
    with torch.no_grad():
        forecast = model.forecast(images[:, :F], frames.u[:, :F + P].double(), predict_steps=P, num_samples=5,
                                  generator=torch.Generator().manual_seed(1))
    targets = frames.y[:, F:F + P].long()
    pixel_nll = -forecast.pixel_log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert rows[0]["nll"] == pytest.approx(pixel_nll.sum((-2, -1)).mean().item(), rel=1e-10)
    assert rows[0]["mae"] == pytest.approx((forecast.samples - images[:, F:F + P]).abs().mean().item(), rel=1e-10)
    assert rows[0]["nll"] > 0


@pytest.mark.parametrize("kind", [RSSM, GSSM])
@pytest.mark.parametrize("images", [False, True])
def test_baselines_evaluate_deterministically(kind, images):
    torch.manual_seed(0)
    if images:
        data = load_dataset("pendulum_images", "test", num_sequences=3, seq_len=8, cache=False)
        model = kind(image_size=16, ctrl_dim=1, latent_dim=3, embed_dim=4, hidden_dim=8, channels=4)
    else:
        data = vector_dataset()
        model = kind(obs_dim=2, ctrl_dim=1, latent_dim=3, embed_dim=4, hidden_dim=8).double()
    options = dict(filter_points=(2, 3), predict_steps=3, num_samples=4, batch_size=2, baseline=False)
    first, again = evaluate(model, data, seed=5, **options), evaluate(model, data, seed=5, **options)
    other = evaluate(model, data, seed=6, **options)
    assert first == again
    assert [row["mae"] for row in first] != [row["mae"] for row in other]
    assert all(math.isfinite(row["nll"]) and row["mae"] > 0 for row in first)
    assert model.training  # evaluation restores the training mode


def test_run_directory_round_trip(example_run):
    with pytest.raises(ValueError, match=r"T=40.*F=25.*P=20"):
        evaluate(example_run)  # default F = (5, 25) with P = 20 does not fit 40 steps
    rows = evaluate(example_run, filter_points=(5, 15), num_samples=10, batch_size=3, baseline=False)
    assert [(r["name"], r["dataset"], r["filter_points"], r["predict_steps"], r["num_sequences"]) for r in rows] == [
        ("example", "vdp", 5, 20, 8), ("example", "vdp", 15, 20, 8)]
    assert read_evaluation(example_run / "evaluation.csv") == rows
    table = (example_run / "evaluation.md").read_text().splitlines()
    assert table[2] == f"| example | vdp | 5 | 20 | {rows[0]['nll']:.3f} | {rows[0]['mae']:.3f} | 8 |"
    assert not list(example_run.glob("*.tmp"))

    model, _, test = load_run(example_run)
    with torch.no_grad():
        forecast = model.forecast(test.y[:, :15], None, predict_steps=20, num_samples=10)
    nll = dense_gaussian_nll(test.y[:, 15:35].double(), forecast.mean.double(), forecast.cov.double())
    assert rows[1]["nll"] == pytest.approx(nll.mean().item(), rel=1e-4)  # float32 model


def test_out_dir_and_name_override_for_a_run(example_run, tmp_path):
    rows = evaluate(example_run, filter_points=5, predict_steps=10, num_samples=3, out_dir=tmp_path, name="renamed",
                    baseline=False)
    assert rows[0]["name"] == "renamed"
    assert read_evaluation(tmp_path / "evaluation.csv") == rows


def test_compare_evaluates_missing_runs_and_shows_the_paper(tmp_path):
    config = get_experiment("sro_example", max_iterations=2, out_dir=str(tmp_path), device="cpu",
                            dataset_options={"num_sequences": 4, "seq_len": 30, "cache": False})
    run_dir = train(config, progress=False).run_dir
    assert not (run_dir / "evaluation.csv").exists()
    table = compare([run_dir])
    row = read_evaluation(run_dir / "evaluation.csv")[0]
    assert (row["filter_points"], row["predict_steps"]) == (5, 20)
    line = table.splitlines()[2]
    assert line.startswith(f"| sro_example | vdp | 5 | 20 | {row['nll']:.3f} | {row['mae']:.3f} | 4 | SRO-EKF |")
    assert f"{PUBLISHED['SRO-EKF']['vdp']['mae']:g} ± 0.01" in line
    assert "not stated" in line


def test_compare_reads_csvs_of_several_runs(tmp_path):
    rows = [{"name": "dt_ekf_kvae_nop_pend_img", "dataset": "pendulum_images", "filter_points": 5,
             "predict_steps": 20, "nll": 1200.5, "mae": 0.1, "num_sequences": 32},
            {"name": "oo_planet_push", "dataset": "mit_push", "filter_points": 5, "predict_steps": 20,
             "nll": -6.0, "mae": 0.3, "num_sequences": 20},
            {"name": "gssm_push", "dataset": "mit_push", "filter_points": 5, "predict_steps": 20,
             "nll": -5.0, "mae": 0.4, "num_sequences": 20}]
    paths = []
    for index, row in enumerate(rows):
        path = tmp_path / f"run{index}.csv"
        path.write_text("name,dataset,filter_points,predict_steps,nll,mae,num_sequences\n"
                        + ",".join(str(row[k]) for k in row) + "\n")
        paths.append(path)
    lines = compare(paths).splitlines()
    assert len(lines) == 5
    assert lines[2] == ("| dt_ekf_kvae_nop_pend_img | pendulum_images | 5 | 20 | 1200.500 | 0.100 | 32 "
                        "| V-EKF (no replay) | 1148 |  | exact |")
    assert "| PlaNet, overshooting | -6.29 |" in lines[3] and "observation" in lines[3]
    assert lines[4].endswith("| — |  |  | no published row |")


def test_bad_inputs_fail_clearly(tmp_path):
    model, data = EKFModel(2, 2, 1, hidden=4).double(), vector_dataset()
    with pytest.raises(ValueError, match="pass dataset="):
        evaluate(model)
    with pytest.raises(ValueError, match=r"T=10.*F=8.*P=5"):
        evaluate(model, data, filter_points=8, predict_steps=5)
    with pytest.raises(ValueError, match="not a run directory"):
        evaluate(tmp_path)
    with pytest.raises(ValueError, match="not a run directory"):
        compare([tmp_path])
    with pytest.raises(ValueError, match="does not exist"):
        compare([tmp_path / "missing"])
    with pytest.raises(ValueError, match="run directory .* or an nn.Module"):
        evaluate(3, data)
    with pytest.raises(ValueError, match="num_samples"):
        evaluate(model, data, filter_points=2, predict_steps=2, num_samples=0)
    bad_csv = tmp_path / "other.csv"
    bad_csv.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an evaluation CSV"):
        compare(bad_csv)
    with pytest.raises(ValueError, match="at least one"):
        compare([])
