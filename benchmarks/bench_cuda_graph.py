"""One whole training step of the push DT-EKF at the paper's size (`dt_ekf_push`: loss, backward, clipping, Adam),
eager against a CUDA graph of the step (`torch.cuda.CUDAGraph`), and eager on one CPU thread.

Usage: python benchmarks/bench_cuda_graph.py [--devices cpu cuda] [--points B,T ...] [--repeats N]

A graph replays the kernels one step launched, so it removes the launch and Python cost that makes the paper-size
models slower on a GPU than on one CPU core. What a graph fixes when it is captured: the shapes (one graph per
curriculum window), and every Python number the step reads, here the objective's burn-in and KL weights (the step
is timed at full weights, past both warm-ups, as the other benchmarks time it). Adam runs with `capturable=True`.
While a graph is captured, the library's Cholesky solves run as two triangular solves (`gaussian.factor_solve`),
since MAGMA's batched `cholesky_solve` cannot be captured.
Before timing, the script checks the graph against eager steps on the same data from the same weights, with the
S-EKF objective (no sampling): the largest relative difference of the losses of 5 steps and of the weights after
them (`max_rel_diff`).

With `--train-iterations N` it also trains `dt_ekf_push` for N iterations through `train`, eagerly and with
`cuda_graph=True` (loss weights settled after 10 iterations, full windows of T = 50, B = 16), and prints the median
seconds per iteration of the second half of each run. Their final losses are printed but not comparable: training
on full windows from the first iteration is chaotic, so rounding differences grow about tenfold an iteration
(`trajectory_divergence.py`); the check above compares five steps.

Prints one JSON line per measurement: experiment, device, mode (eager or cuda_graph), batch B, window T,
median/min/max seconds per step, and for graphs the capture's seconds.
"""
import argparse
import copy
import json
import statistics
import time

import torch

from common import processor
from replay_overshooting.data import SequenceDataset
from replay_overshooting.training import build_model, compute_loss, get_experiment, train

FULL_WEIGHTS = 10**6  # an iteration past the replay burn-in and the KL annealing
DEFAULT_POINTS = ((16, 12), (16, 50), (256, 50), (1024, 50))


def push_shaped(batch: int, window: int, seed: int = 0) -> SequenceDataset:
    "Random normalised sequences shaped like the push data: `y (B, T, 2)`, `u (B, T, 6)`."
    g = torch.Generator().manual_seed(seed)
    return SequenceDataset(name="mit_push", split="train", y=torch.randn(batch, window, 2, generator=g),
                           u=torch.randn(batch, window, 6, generator=g), dt=0.005, window_length=window,
                           normalization={}, source="random")


def model_and_optimizer(config, data, device):
    torch.manual_seed(0)
    model = build_model(config, data).to(device)
    capturable = device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=capturable, foreach=not capturable)
    return model, optimizer


def eager_step(model, optimizer, config, y, u):
    "One training step as `train` runs it (unchecked loss, as under `vmap`: no host synchronisation)."
    optimizer.zero_grad(set_to_none=True)
    loss, _ = compute_loss(model, config, y, u, FULL_WEIGHTS, checked=False)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss.detach()


def captured_step(model, optimizer, config, y, u):
    """`(replay, static_y, static_u, static_loss, capture_seconds)`: the step captured as one CUDA graph after three
    warm-up steps on a side stream; `replay()` runs it on whatever was copied into `static_y` and `static_u`."""
    static_y, static_u = y.clone(), u.clone()
    start = time.perf_counter()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            eager_step(model, optimizer, config, static_y, static_u)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss, _ = compute_loss(model, config, static_y, static_u, FULL_WEIGHTS, checked=False)
        static_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
    torch.cuda.synchronize()
    return graph.replay, static_y, static_u, static_loss, time.perf_counter() - start


def timed(fn, repeats, synchronise):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronise()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def host_synchronisations(model, optimizer, config, y, u) -> list:
    "Where one eager step makes the host wait for the GPU (a graph cannot capture those): `file:line` of each."
    import warnings
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            eager_step(model, optimizer, config, y, u)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sorted({f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})


def check_graph_against_eager(device) -> float:
    """Five S-EKF steps eager and five replays from the same weights on the same batches: the largest relative
    difference of the losses and of the final weights. The three warm-up steps of the capture run on copies."""
    config = get_experiment("s_ekf_dt_ekf_push", device=str(device))
    batches = [push_shaped(16, 20, seed) for seed in range(5)]
    model, optimizer = model_and_optimizer(config, batches[0], device)
    graph_model = copy.deepcopy(model)
    graph_optimizer = torch.optim.Adam(graph_model.parameters(), lr=1e-3, capturable=True)
    eager_losses = [eager_step(model, optimizer, config, b.y.to(device), b.u.to(device)) for b in batches]
    start_state = copy.deepcopy(graph_model.state_dict())
    replay, static_y, static_u, static_loss, _ = captured_step(
        graph_model, graph_optimizer, config, batches[0].y.to(device), batches[0].u.to(device))
    graph_model.load_state_dict(start_state)  # undo the warm-up and capture steps
    for state in graph_optimizer.state.values():  # fresh Adam moments, zeroed in the tensors the graph captured
        for value in state.values():
            value.zero_()
    graph_losses = []
    for b in batches:
        static_y.copy_(b.y)
        static_u.copy_(b.u)
        replay()
        graph_losses.append(static_loss.clone())
    torch.cuda.synchronize()
    diffs = [((g - e).abs() / e.abs().clamp_min(1e-12)).item() for g, e in zip(graph_losses, eager_losses)]
    for p, q in zip(graph_model.parameters(), model.parameters()):
        diffs.append(((p - q).abs().max() / q.abs().max().clamp_min(1e-12)).item())
    return max(diffs)


def time_training(iterations: int) -> None:
    "`train` of the push DT-EKF for `iterations`, eager and with `cuda_graph`: median seconds of the second half."
    import tempfile
    config = get_experiment("dt_ekf_push", device="cuda", max_iterations=iterations, burn_in=10, kl_anneal=10,
                            ramp=None, batch_size=16, checkpoint_every=10**6)
    data = push_shaped(256, 50)
    for graph in (False, True):
        with tempfile.TemporaryDirectory() as run_dir:
            history = train(config.replace(cuda_graph=graph), progress=False, dataset=data, run_dir=run_dir).history
        seconds = [row["seconds"] for row in history[iterations // 2:]]
        print(json.dumps({"experiment": config.name, "device": "cuda", "mode": "train, cuda_graph" if graph else
                          "train, eager", "batch": 16, "window": 50, "iterations": iterations,
                          "median_s": round(statistics.median(seconds), 5),
                          "final_loss": round(history[-1]["loss"], 6)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    parser.add_argument("--points", nargs="+", default=[f"{b},{t}" for b, t in DEFAULT_POINTS], metavar="B,T")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-iterations", type=int, default=0, help="also time N iterations of `train`")
    parser.add_argument("--linalg", choices=("default", "cusolver", "magma"), default="default",
                        help="torch.backends.cuda.preferred_linalg_library")
    args = parser.parse_args()
    if args.linalg != "default":
        torch.backends.cuda.preferred_linalg_library(args.linalg)
    points = [tuple(int(v) for v in point.split(",")) for point in args.points]
    for name in args.devices:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            print(json.dumps({"device": name, "skipped": "CUDA is not available"}), flush=True)
            continue
        if device.type == "cpu":
            torch.set_num_threads(1)
        synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        config = get_experiment("dt_ekf_push", device=name)
        if device.type == "cuda":
            data = push_shaped(16, 12)
            syncs = host_synchronisations(*model_and_optimizer(config, data, device), config,
                                          data.y.to(device), data.u.to(device))
            print(json.dumps({"check": "host synchronisations in one eager step", "sites": syncs}), flush=True)
        for batch, window in points:
            data = push_shaped(batch, window)
            y, u = data.y.to(device), data.u.to(device)
            model, optimizer = model_and_optimizer(config, data, device)
            repeats = args.repeats if device.type == "cuda" or batch <= 16 else max(3, args.repeats // 10)
            for _ in range(3):
                eager_step(model, optimizer, config, y, u)
            synchronise()
            median, low, high = timed(lambda: eager_step(model, optimizer, config, y, u), repeats, synchronise)
            print(json.dumps({"experiment": config.name, "device": name, "batch": batch, "window": window,
                              "mode": "eager", "linalg": args.linalg, "median_s": round(median, 5),
                              "min_s": round(low, 5), "max_s": round(high, 5), **processor()}), flush=True)
        if device.type == "cuda":  # after every eager point: a failed capture can leave the stream unusable
            try:
                print(json.dumps({"check": "cuda_graph against eager, 5 S-EKF steps",
                                  "max_rel_diff": check_graph_against_eager(device)}), flush=True)
            except Exception as error:  # report and go on to the timings
                print(json.dumps({"check": "cuda_graph against eager", "error": repr(error)[:500]}), flush=True)
            if args.train_iterations:
                time_training(args.train_iterations)
            for batch, window in points:
                time_graph(config, device, batch, window, args.repeats, linalg=args.linalg)


def time_graph(config, device, batch, window, repeats, **settings):
    "Capture the step at `(batch, window)` and print its replay's time, or the error the capture raised."
    data = push_shaped(batch, window)
    y, u = data.y.to(device), data.u.to(device)
    common = {"experiment": config.name, "device": str(device), "batch": batch, "window": window, "mode": "cuda_graph",
              **processor(), **settings}
    model, optimizer = model_and_optimizer(config, data, device)
    try:
        replay, static_y, static_u, _, capture_s = captured_step(model, optimizer, config, y, u)
    except Exception as error:  # report it and go on
        print(json.dumps({**common, "error": repr(error)[:500]}), flush=True)
        return

    def graph_step():
        static_y.copy_(y)
        static_u.copy_(u)
        replay()

    graph_step()
    torch.cuda.synchronize()
    median, low, high = timed(graph_step, repeats, torch.cuda.synchronize)
    print(json.dumps({**common, "median_s": round(median, 5), "min_s": round(low, 5), "max_s": round(high, 5),
                      "capture_s": round(capture_s, 3)}), flush=True)


if __name__ == "__main__":
    main()
