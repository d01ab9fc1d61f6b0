"""CUDA against the CPU: every registered model and objective, vectorised seeds, training, checkpoints, evaluation
and the fused backend against the reference path. The CPU side runs the C++ recursions where they apply, CUDA the batched ATen operations,
so agreement checks both. Skipped without CUDA."""
import contextlib
import math

import pytest
import torch

from replay_overshooting.data import SequenceDataset
from replay_overshooting.evaluation import evaluate
from replay_overshooting.models import EKFModel
from replay_overshooting.objectives import vro
from replay_overshooting.training import EXPERIMENTS, build_model, compute_loss, get_experiment, load_run, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = torch.device("cuda")
# every base experiment, and one of each objective variant (sro, s_ekf) for vector and image models
CASES = sorted(name for name in EXPERIMENTS if not name.startswith(("sro_", "s_ekf_"))) + [
    "sro_dt_ekf_push", "s_ekf_dt_ekf_push", "sro_dt_ekf_kvae_pend_img"]
OBSERVATIONS = {"vdp": (2, 0), "pendulum_xy": (2, 1), "mit_push": (2, 6), "pendulum_images": ((16, 16), 1)}


def random_data(config, num_sequences=3, steps=12):
    "Random sequences shaped like the config's dataset: `y (N, T, p)` or uint8 frames `(N, T, 16, 16)`, `u (N, T, m)`."
    shape, ctrl_dim = OBSERVATIONS[config.dataset]
    g = torch.Generator().manual_seed(0)
    if isinstance(shape, tuple):
        y = torch.randint(0, 256, (num_sequences, steps, *shape), generator=g, dtype=torch.uint8)
    else:
        y = torch.randn(num_sequences, steps, shape, generator=g)
    return SequenceDataset(name=config.dataset, split="train", y=y, u=torch.randn(num_sequences, steps, ctrl_dim, generator=g),
                           dt=0.05, window_length=steps, normalization={}, source="random")


@contextlib.contextmanager
def noise_drawn_on_cpu(seed=0):
    """`torch.randn`/`randn_like` draw from one CPU generator and move the draw to the requested device, so the
    stochastic models (RSSM, GSSM, the image EKF's encoder samples) see the same noise on both devices."""
    g, randn = torch.Generator().manual_seed(seed), torch.randn

    def drawn(*size, generator=None, dtype=None, device=None, **kwargs):
        return randn(*size, generator=g, dtype=dtype).to(device or "cpu")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "randn", drawn)
        patch.setattr(torch, "randn_like", lambda x, **kwargs: drawn(x.shape, dtype=x.dtype, device=x.device))
        yield


def loss_and_grads(model, config, dataset, device):
    "The training loss at full weights and its parameter gradients, on `device`, in float64."
    model = model.to(device)
    y = dataset.y.to(device)
    y = SequenceDataset.image_to_float(y, torch.float64) if dataset.is_image else y.double()
    u = dataset.u.to(device=device, dtype=torch.float64) if dataset.ctrl_dim else None
    with noise_drawn_on_cpu():
        loss, _ = compute_loss(model, config, y, u, 10**6)
    return loss.detach().cpu(), [g.cpu() for g in torch.autograd.grad(loss, list(model.parameters()))]


@pytest.mark.parametrize("name", CASES)
def test_loss_and_gradients_match_cpu(name):
    config = EXPERIMENTS[name]
    if config.model_options.get("dynamics") == "ensemble":
        config = config.replace(model_options={**config.model_options, "ensemble_size": 10})
    dataset = random_data(config)
    torch.manual_seed(0)
    model = build_model(config, dataset).double()
    cpu_loss, cpu_grads = loss_and_grads(model, config, dataset, "cpu")
    cuda_loss, cuda_grads = loss_and_grads(model, config, dataset, CUDA)
    # adaptive ODE steps chosen from round-off-different error estimates agree to about the solver's tolerance
    rtol = 1e-6 if config.model_options.get("dynamics") == "continuous" else 1e-9
    assert math.isfinite(cpu_loss.item())
    torch.testing.assert_close(cuda_loss, cpu_loss, rtol=rtol, atol=0)
    scale = max(g.abs().max().item() for g in cpu_grads)
    for cuda_grad, cpu_grad in zip(cuda_grads, cpu_grads, strict=True):
        torch.testing.assert_close(cuda_grad, cpu_grad, rtol=100 * rtol, atol=100 * rtol * scale)


def example(tmp_path, device, **changes):
    options = dict(max_iterations=3, batch_size=3, dtype="float64", device=device, out_dir=str(tmp_path / device),
                   dataset_options={"num_sequences": 7, "seq_len": 11, "cache": False})
    return get_experiment("example", **{**options, **changes})


def test_training_on_cuda_follows_the_cpu_run_and_its_checkpoint_loads_on_cpu(tmp_path):
    cpu = train(example(tmp_path, "cpu"), progress=False)
    gpu = train(example(tmp_path, "cuda"), progress=False)
    assert next(gpu.model.parameters()).device.type == "cuda"
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(torch.tensor([r[key] for r in gpu.history]),
                                   torch.tensor([r[key] for r in cpu.history]), rtol=1e-8, atol=0)
    loaded, config, test = load_run(gpu.run_dir, device="cpu")
    assert config.device == "cuda"
    for key, value in gpu.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.cpu(), rtol=1e-8, atol=1e-10)
    interrupted = example(tmp_path / "interrupted", "cuda", checkpoint_every=1)

    def stop_in_iteration_one(iteration, row):  # before its checkpoint: the run resumes at iteration 1
        if iteration == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=False, callback=stop_in_iteration_one)
    resumed = train(interrupted, progress=False, resume=True)
    assert [r["iteration"] for r in resumed.history] == [1, 2]
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in gpu.history[1:]], rel=1e-12)
    on_cpu = evaluate(gpu.run_dir, filter_points=5, predict_steps=4, num_samples=200, out_dir=tmp_path / "e_cpu")
    on_cuda = evaluate(gpu.run_dir, filter_points=5, predict_steps=4, num_samples=200, device="cuda",
                       out_dir=tmp_path / "e_cuda")
    # the NLL is exact Gaussian arithmetic; the MAE averages samples, drawn by the CPU and CUDA generators
    assert on_cuda[0]["nll"] == pytest.approx(on_cpu[0]["nll"], rel=1e-8)
    assert on_cuda[0]["mae"] == pytest.approx(on_cpu[0]["mae"], rel=0.1)


def test_vectorised_seeds_on_cuda_match_the_cpu(tmp_path):
    cpu_runs = train(example(tmp_path, "cpu", max_iterations=2), progress=False, seeds=[0, 1])
    gpu_runs = train(example(tmp_path, "cuda", max_iterations=2), progress=False, seeds=[0, 1])
    for cpu, gpu in zip(cpu_runs, gpu_runs, strict=True):
        torch.testing.assert_close(torch.tensor([r["loss"] for r in gpu.history]),
                                   torch.tensor([r["loss"] for r in cpu.history]), rtol=1e-8, atol=0)
        for key, value in cpu.model.state_dict().items():
            torch.testing.assert_close(gpu.model.state_dict()[key].cpu(), value, rtol=1e-6, atol=1e-8)


def test_the_fused_backend_on_cuda_matches_the_reference_path():
    "On a GPU `auto` runs the fused nodes; they give the reference path's loss and gradients there too."
    torch.manual_seed(0)
    model = EKFModel(3, 2, 1, hidden=16).double().to(CUDA)
    y, u = torch.randn(4, 9, 2, dtype=torch.float64, device=CUDA), torch.randn(4, 9, 1, dtype=torch.float64, device=CUDA)
    results = []
    for backend in ("auto", "reference"):
        model.backend = backend
        loss, _ = vro(model, y, u, iteration=10**6)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (fused_loss, fused_grads), (reference_loss, reference_grads) = results
    torch.testing.assert_close(fused_loss, reference_loss, rtol=1e-10, atol=0)
    for a, b in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)

def test_factor_solves_captured_in_a_graph_equal_the_plain_ones():
    from replay_overshooting.gaussian import factor_inverse, factor_solve
    g = torch.Generator().manual_seed(3)
    A = torch.randn(50, 4, 4, generator=g, dtype=torch.float64)
    L = torch.linalg.cholesky(A @ A.mT + 0.5 * torch.eye(4, dtype=torch.float64)).to(CUDA)
    B = torch.randn(50, 4, 3, generator=g, dtype=torch.float64).to(CUDA)
    factor_solve(B, L), factor_inverse(L)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        solved, inverse = factor_solve(B, L), factor_inverse(L)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(solved, torch.cholesky_solve(B, L), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inverse, torch.cholesky_inverse(L), rtol=1e-12, atol=1e-12)


GRAPH_CASES = ["dt_ekf_push", "sro_dt_ekf_push", "s_ekf_dt_ekf_push", "dt_ekf_push_nop", "le_ekf_push", "example"]


@pytest.mark.parametrize("name", GRAPH_CASES)
def test_cuda_graph_training_follows_the_eager_run(name, tmp_path, monkeypatch):
    """Every objective and discrete dynamics that `cuda_graph` can select: the same loss curve as the eager run in
    float64, through the eager iterations before the weights settle and several windows' graphs after."""
    import replay_overshooting.training as training
    config = EXPERIMENTS[name].replace(
        max_iterations=14, burn_in=2, kl_anneal=3, ramp=3, batch_size=4, dtype="float64", device="cuda",
        checkpoint_every=100)
    if config.model_options.get("dynamics") == "ensemble":
        config = config.replace(model_options={**config.model_options, "ensemble_size": 10})
    dataset = random_data(config, num_sequences=8, steps=10)
    eager = train(config, progress=False, dataset=dataset, run_dir=tmp_path / "eager")
    captures = []
    capture = training.StepGradients._capture
    monkeypatch.setattr(training.StepGradients, "_capture",
                        lambda self, y, u, i: captures.append(tuple(y.shape)) or capture(self, y, u, i))
    graphed = train(config.replace(cuda_graph=True), progress=False, dataset=dataset, run_dir=tmp_path / "graph")
    assert len(captures) >= 2, captures  # several window lengths after iteration 3
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(torch.tensor([r[key] for r in graphed.history]),
                                   torch.tensor([r[key] for r in eager.history]), rtol=1e-9, atol=0)
