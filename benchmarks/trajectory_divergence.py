"""How fast two implementations of the same training run part: one experiment trained twice from the same weights
on the same batches, once per backend, and the relative difference of their losses at each iteration.

Usage: python benchmarks/trajectory_divergence.py [--experiment dt_ekf_push] [--backends native reference]
                                                  [--dtype float64] [--iterations 25] [--window 50]

The data are random sequences shaped like the push data (256 of them, `bench_cuda_graph.push_shaped`), trained on
full windows of `--window` steps (no curriculum) with batches of 16, the replay and KL weights settled after 10
iterations, as `bench_cuda_graph.py --train-iterations` trains. Two backends agree to rounding on one loss and its
gradients (`tests/test_backends.py`), so the first iterations differ by about 1e-16 in float64. What happens next is
a property of the training run, not of either implementation: where the difference grows by a factor every
iteration, the run is chaotic, and the losses that two paths (eager and CUDA graph, CPU and GPU, float32 and
float64) reach after many iterations say nothing about whether either is right. Compare a few iterations, as
`tests/test_cuda.py` does, or losses on fixed weights (`loss_fingerprint.py`).

Prints one JSON line per iteration: the iteration, each backend's loss, their relative difference, and the first
backend's gradient norm before clipping.
"""
import argparse
import json
import tempfile

import torch

from bench_cuda_graph import push_shaped
from replay_overshooting.backends import BACKENDS
from replay_overshooting.training import get_experiment, train


def history(experiment: str, backend: str, dtype: str, iterations: int, window: int) -> list:
    "The metrics rows of `iterations` of training `experiment` with `backend` on the random push-shaped data."
    registered = get_experiment(experiment)
    config = get_experiment(experiment, device="cpu", dtype=dtype, max_iterations=iterations, burn_in=10,
                            kl_anneal=10, ramp=None, batch_size=16, window=window, checkpoint_every=10**6,
                            model_options={**registered.model_options, "backend": backend})
    with tempfile.TemporaryDirectory() as run_dir:
        return train(config, progress=False, dataset=push_shaped(256, window), run_dir=run_dir).history


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="dt_ekf_push", help="a registered vector EKF experiment on push data")
    parser.add_argument("--backends", nargs=2, choices=BACKENDS, default=["native", "reference"])
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    first, second = (history(args.experiment, b, args.dtype, args.iterations, args.window) for b in args.backends)
    for a, b in zip(first, second):
        print(json.dumps({"experiment": args.experiment, "dtype": args.dtype, "iteration": a["iteration"],
                          f"loss_{args.backends[0]}": a["loss"], f"loss_{args.backends[1]}": b["loss"],
                          "rel_diff": abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-300),
                          "grad_norm": a["grad_norm"]}), flush=True)


if __name__ == "__main__":
    main()
