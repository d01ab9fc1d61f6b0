"""Speed of one whole training iteration: objective `vro` + backward + `torch.optim.Adam` step.

Usage: python benchmarks/bench_train.py [--repeats N] [--full] [--skip-sweep] [--sweep-only] [--sweep-devices cpu cuda]
                                        [--backend NAME]

Prints one JSON line per measurement, then a table:
  train_vdp, train_push, train_pend      the paper-size configurations, beside the reference times;
  train_push_ct, train_push_le           continuous-time and linear-ensemble (K = 100) push models; the
                                         continuous-time line gives the solver, its tolerances and `nfe`, the
                                         field evaluations of one iteration's forward pass (an adaptive
                                         solver's work depends on the data and weights), and the time per
                                         evaluation;
  registered_*                           registered experiments as `train` runs them (their objective, clipping
                                         and Adam), from their initial weights on a small sample of their data:
                                         the DT-EKF, the CT-EKF (with torchdiffeq, and with `ode_integrator=
                                         "dormand_prince"`), PlaNet, PlaNet with observation overshooting and GSSM on
                                         push_sim, and the image EKF, the image CT-EKF (both integrators) and
                                         PlaNet on pendulum images; each line
                                         names the experiment, the data and the batch, and, where it was
                                         measured, the paper's code's time (`paper_code_s`), the processor it
                                         was timed on (`paper_code_cpu`) and the speed-up;
                                         the DT-EKF line is timed twice, from the initial weights and from
                                         those of 150 training iterations (`weights`);
  sweep                                  the push DT-EKF over window T, batch B and latent n (a subset by
                                         default, all 18 points with --full), and on CUDA when available
                                         (with `peak_gib`, the peak of allocated GPU memory; a point that
                                         does not fit prints `out_of_memory`).
Every line names the processor it ran on (`cpu`, `cpu_capability`). Every CPU measurement uses one thread and
is the median of `--repeats` timed iterations after warm-up. The
discrete-time EKF runs its filter, smoother and replay recursions in C++ where they are built (`cpp_loops` in
each line); `--backend reference|fused|native|auto` times another backend (`00b_backends`).
"""
import itertools
import json

import torch

from common import (
    CONFIGS, REFERENCE_SECONDS, benchmark_parser, count_ops, cpp_loops_on, paper_code_fields, parse_single_threaded,
    processor, report, time_it)
from replay_overshooting.data import SequenceDataset
from replay_overshooting.models import EKFModel
from replay_overshooting.objectives import vro
from replay_overshooting.training import _adam, _draw_batch, _training_data, build_model, compute_loss, get_experiment

SWEEP_FULL = list(itertools.product((50, 200, 1000), (16, 256, 1024), (8, 32)))
SWEEP_DEFAULT = [(50, 16, 8), (200, 16, 8), (1000, 16, 8), (50, 256, 8), (50, 1024, 8), (50, 16, 32), (200, 256, 32)]


def training_step(model, y, u):
    "One iteration at full loss weights (iteration past burn-in and KL anneal), as the speed reference times it."
    optimizer = _adam(model.parameters(), 1e-3)  # as `train` does

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = vro(model, y, u, iteration=10**6)
        loss.backward()
        optimizer.step()
    return step


def from_initial_weights(model, step):
    """`step` run from the model's initial weights every time: long open-loop windows of an untrained model on
    random data diverge within a few Adam steps, and the sweep times the cost of an iteration, not training."""
    initial = {name: value.clone() for name, value in model.state_dict().items()}

    def restarted():
        model.load_state_dict(initial)
        step()
    return restarted


def problem(*, latent_dim, obs_dim, ctrl_dim, T, batch, hidden, device="cpu", **model_options):
    "A model and random data `y (B,T,p)`, `u (B,T,m)` for one configuration."
    torch.manual_seed(0)
    model = EKFModel(latent_dim, obs_dim, ctrl_dim, hidden=hidden, **model_options).to(device)
    y = torch.randn(batch, T, obs_dim, device=device)
    u = torch.randn(batch, T, ctrl_dim, device=device) if ctrl_dim else None
    return model, y, u


def runs_cpp_loops(cfg, **model_options):
    """Whether the model of a configuration really runs the C++ recursions (discrete-time EKF, CPU):
    a fresh one filters its data once (a trained one may have diverged on random data)."""
    model, y, u = problem(**cfg, **model_options)
    return type(model.filter(y, u).predicted_means.grad_fn).__name__.startswith("_Native")


def measure(name, cfg, *, repeats, warmup=3, with_ops=True, reference=None, **model_options):
    "Time one configuration, print its JSON line and return (name, median, reference, ops)."
    model, y, u = problem(**cfg, **model_options)
    step = training_step(model, y, u)
    extra = {}
    med, lo, hi = time_it(step, warmup=warmup, repeats=repeats)
    extra["cpp_loops"] = runs_cpp_loops(cfg, **model_options)
    if hasattr(model.dynamics, "function_evaluations"):  # an adaptive solver's cost: say how much work it did
        model.dynamics.function_evaluations = 0
        step()
        extra["nfe"] = model.dynamics.function_evaluations
        extra["ms_per_evaluation"] = round(1e3 * med / extra["nfe"], 3)
        extra.update(method=model.dynamics.method, rtol=model.dynamics.rtol, atol=model.dynamics.atol,
                     data="random normal y and u")
    ops = count_ops(step) if with_ops else None
    if reference is not None:
        extra.update(reference_s=reference, speedup=round(reference / med, 2))
    report(name, med, lo, hi, ops=ops, **extra)
    return name, med, reference, ops


PUSH_SAMPLE = {"num_trajectories": 80, "num_eval": 8}  # push_sim: MIT Push's layout and sizes, fewer pushes
REGISTERED = {  # line → (registered experiment, the data set it trains on here, a small sample of that data[,
    #                  model options changed])
    "registered_dt_ekf_push": ("dt_ekf_push", "push_sim", PUSH_SAMPLE),
    "registered_dt_ekf_push_trained": ("dt_ekf_push", "push_sim", PUSH_SAMPLE),
    "registered_ct_ekf_push": ("ct_ekf_push", "push_sim", PUSH_SAMPLE),
    "registered_ct_ekf_push_dormand_prince": ("ct_ekf_push", "push_sim", PUSH_SAMPLE,
                                              {"ode_integrator": "dormand_prince"}),
    "registered_planet_push": ("planet_push", "push_sim", PUSH_SAMPLE),
    "registered_oo_planet_push": ("oo_planet_push", "push_sim", PUSH_SAMPLE),
    "registered_gssm_push": ("gssm_push", "push_sim", PUSH_SAMPLE),
    "registered_image_ekf_pend": ("dt_ekf_kvae_pend_img", "pendulum_images", {"num_sequences": 64, "cache": False}),
    "registered_ct_ekf_pend_img": ("ct_ekf_kvae_pend_img", "pendulum_images", {"num_sequences": 64, "cache": False}),
    "registered_ct_ekf_pend_img_dormand_prince": ("ct_ekf_kvae_pend_img", "pendulum_images",
                                                  {"num_sequences": 64, "cache": False},
                                                  {"ode_integrator": "dormand_prince"}),
    "registered_planet_pend_img": ("planet_pend_img", "pendulum_images", {"num_sequences": 64, "cache": False}),
    "registered_gssm_pend_img": ("gssm_pend_img", "pendulum_images", {"num_sequences": 64, "cache": False}),
}
# Lines timed from the weights of that many iterations of training on their sample (full windows and loss
# weights, the experiment's learning rate) instead of the initial ones: what a run spends its time on. The
# subnormal floats that training produces slowed these iterations by up to 1.75× until the C++ nodes flushed them.
TRAINED_FIRST = {"registered_dt_ekf_push_trained": 150}


def _batch_tensors(dataset, batch):
    """`y (B,T,…)` and `u (B,T,m)` (None without controls) of a drawn batch in float32, frames scaled as `train`
    scales them."""
    y = batch["y"]
    y = SequenceDataset.image_to_float(y, torch.float32) if dataset.is_image else y.float()
    return y, batch["u"].float() if dataset.ctrl_dim else None


def _training_step(model, config, optimizer, y, u):
    "One iteration as `train` runs it, at full loss weights: loss, backward, the config's clipping, Adam."
    optimizer.zero_grad(set_to_none=True)
    loss, _ = compute_loss(model, config, y, u, 10**6)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()


def _train_briefly(model, config, dataset, length, optimizer, iterations):
    "`iterations` training steps on batches drawn as `train` draws them."
    per_epoch = max(1, len(dataset) // config.batch_size)
    for iteration in range(iterations):
        y, u = _batch_tensors(dataset, _draw_batch(dataset, config, iteration, per_epoch, length))
        _training_step(model, config, optimizer, y, u)


def measure_registered(name, *, repeats, warmup=2):
    """Time one iteration of a registered experiment as `train` runs it: its model and objective at full weights,
    backward, gradient clipping and Adam, on a batch of full-length windows of its data set (a small sample).
    Prints its JSON line, with the experiment, data and, for an adaptive solver, its work; returns a table row."""
    experiment, dataset_name, options, *changed = REGISTERED[name]
    config = get_experiment(experiment, dataset=dataset_name, dataset_options=options, device="cpu")
    if changed:
        config = config.replace(model_options={**config.model_options, **changed[0]})
    dataset, length = _training_data(config, None)
    torch.manual_seed(config.seed)
    model = build_model(config, dataset)
    y, u = _batch_tensors(dataset, _draw_batch(dataset, config, 0, max(1, len(dataset) // config.batch_size), length))
    optimizer = _adam(model.parameters(), config.lr)
    trained = TRAINED_FIRST.get(name, 0)
    _train_briefly(model, config, dataset, length, optimizer, trained)
    initial = {key: value.clone() for key, value in model.state_dict().items()}

    def step():
        model.load_state_dict(initial)  # every iteration from the same weights (the initial ones, or `trained`)
        _training_step(model, config, optimizer, y, u)
    med, lo, hi = time_it(step, warmup=warmup, repeats=repeats)
    extra = {"experiment": experiment, **({"model_options_changed": changed[0]} if changed else {}),
             "weights": f"after {trained} training iterations" if trained else "initial",
             "data": f"{dataset_name} {options}", "batch": tuple(y.shape),
             "parameters": sum(p.numel() for p in model.parameters())}
    dynamics = getattr(model, "dynamics", None) or getattr(getattr(model, "ekf", None), "dynamics", None)
    # the C++ recursions serve the discrete-time and ensemble EKFs, and the continuous-time time update with our
    # Dormand–Prince loop (`MLP.belief_flow`); not the baselines or torchdiffeq
    extra["cpp_loops"] = (dynamics is not None and getattr(dynamics, "integrator", "dormand_prince") == "dormand_prince"
                          and cpp_loops_on())
    if hasattr(dynamics, "function_evaluations"):
        dynamics.function_evaluations = 0
        step()
        extra.update(nfe=dynamics.function_evaluations, ms_per_evaluation=round(1e3 * med / dynamics.function_evaluations, 3),
                     method=dynamics.method, rtol=dynamics.rtol, atol=dynamics.atol, integrator=dynamics.integrator)
    extra.update(paper_code_fields(experiment, med))
    report(name, med, lo, hi, **extra)
    return name, med, extra.get("paper_code_s"), None


def sweep_point(cfg, *, repeats, device):
    """Time one sweep point; returns (median, min, max) and the extra fields of its line: `peak_gib` (the peak of
    allocated memory) on CUDA."""
    model, y, u = problem(**cfg)
    step = from_initial_weights(model, training_step(model, y, u))
    if device == "cuda":
        inner = step

        def step():
            inner()
            torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    extra = {}
    times = time_it(step, warmup=1, repeats=repeats)
    if device == "cuda":
        extra["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return times, extra


def sweep(points, *, repeats, device):
    "The push DT-EKF over (T, B, n); returns table rows (a point that runs out of GPU memory says so)."
    name, rows = "sweep", []
    for T, B, n in points:
        cfg = dict(CONFIGS["push"], T=T, batch=B, latent_dim=n, device=device)
        point = dict(device=device, T=T, batch=B, latent_dim=n)
        try:
            (med, lo, hi), extra = sweep_point(cfg, repeats=repeats, device=device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(json.dumps({"config": name, "out_of_memory": True, **point}), flush=True)
            rows.append((f"{name} {device} T={T} B={B} n={n}", None, None, None))
            continue
        report(name, med, lo, hi, cpp_loops=runs_cpp_loops(cfg), **extra, **point)
        rows.append((f"{name} {device} T={T} B={B} n={n}", med, None, None))
    return rows


def main():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="all 18 sweep points instead of a subset")
    parser.add_argument("--skip-sweep", action="store_true", help="leave out the scaling sweep")
    parser.add_argument("--sweep-only", action="store_true", help="only the scaling sweep")
    parser.add_argument("--sweep-devices", nargs="+", choices=["cpu", "cuda"],
                        help="where the sweep runs (default: the CPU, and CUDA when present)")
    args = parse_single_threaded(parser)
    devices = args.sweep_devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--sweep-devices cuda: no CUDA device is available")
    rows = []
    if not args.sweep_only:
        for name, cfg in CONFIGS.items():
            rows.append(measure(f"train_{name}", cfg, repeats=args.repeats, reference=REFERENCE_SECONDS[name]))
        rows.append(measure("train_push_ct", CONFIGS["push"], repeats=3, warmup=1, with_ops=False,
                            dynamics="continuous"))
        rows.append(measure("train_push_le", CONFIGS["push"], repeats=max(3, args.repeats // 3), dynamics="ensemble",
                            ensemble_size=100))
        rows += [measure_registered(name, repeats=3) for name in REGISTERED]
    if not args.skip_sweep:
        points = SWEEP_FULL if args.full else SWEEP_DEFAULT
        for device in devices:
            rows += sweep(points, repeats=3 if device == "cpu" else 5, device=device)
    print(f"\nOn {processor()['cpu']}; reference s: the reference implementation (`train_*`) or the paper's code\n"
          "(`registered_*`, timed on the processor each line's `paper_code_cpu` names).\n\n"
          "| measurement | median s | reference s | speed-up | aten ops |\n|---|---|---|---|---|")
    for name, med, ref, ops in rows:
        speedup = f"{ref / med:.1f}x" if ref else ""
        print(f"| {name} | {'out of memory' if med is None else f'{med:.4f}'} | {ref or ''} | {speedup} | {ops or ''} |")


if __name__ == "__main__":
    main()
