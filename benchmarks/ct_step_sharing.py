"""How much the batch's shared step size costs a trained continuous-time EKF.

Usage: python benchmarks/ct_step_sharing.py RUN_DIR [RUN_DIR ...] [--batches N] [--window T]

An adaptive solver steps the whole batch with one step size (`continuous.dormand_prince`: the error norm is taken
over the batch), so one sequence whose dynamics are stiff where it is makes every sequence take its small steps.
For each run directory written by `train` (a CT-EKF, on vectors or images), this filters `--batches` batches of
test windows, as training batches them, with the batch together and with each sequence alone, and prints one JSON
line per run: the field evaluations of the batch (`nfe_batch`, per batch), the mean and the largest over its
sequences of their evaluations alone (`nfe_alone_mean`, `nfe_alone_max`), and the time of each. Per-sequence
step control in one batched kernel would still evaluate the batch until its slowest sequence ends (about
`nfe_alone_max`); solving each sequence alone costs `nfe_alone_mean` evaluations of one row each.
"""
import argparse
import json
import time

import torch

from replay_overshooting.data import SequenceDataset
from replay_overshooting.training import load_run


def _observations(model, y):
    "The EKF's observations of a batch: the encoder's means for an image model, the data itself otherwise."
    if hasattr(model, "encode"):
        return model.encode(y)[0]
    return y


def measure(run_dir, *, batches, window):
    model, config, test = load_run(run_dir)
    ekf = model.ekf if hasattr(model, "ekf") else model
    dynamics = ekf.dynamics
    dynamics.integrator = "dormand_prince"  # our loop takes torchdiffeq's dopri5 steps and counts them per solve
    torch.manual_seed(0)
    order = torch.randperm(len(test))
    size = config.batch_size
    batches = min(batches, len(test) // size)
    if batches == 0:
        raise SystemExit(f"{run_dir}: its test split has {len(test)} sequences, fewer than a batch of {size}")
    rows = {"nfe_batch": [], "nfe_alone_mean": [], "nfe_alone_max": [], "s_batch": [], "s_alone": []}
    with torch.no_grad():
        for b in range(batches):
            index = order[b * size:(b + 1) * size]
            y = test.y[index, :window]
            y = SequenceDataset.image_to_float(y, torch.float32) if test.is_image else y.float()
            u = test.u[index, :window].float() if test.ctrl_dim else None
            z = _observations(model, y)
            dynamics.function_evaluations, tic = 0, time.perf_counter()
            ekf.filter(z, u)
            rows["s_batch"].append(time.perf_counter() - tic)
            rows["nfe_batch"].append(dynamics.function_evaluations)
            alone, tic = [], time.perf_counter()
            for i in range(len(index)):
                dynamics.function_evaluations = 0
                ekf.filter(z[i:i + 1], None if u is None else u[i:i + 1])
                alone.append(dynamics.function_evaluations)
            rows["s_alone"].append(time.perf_counter() - tic)
            rows["nfe_alone_mean"].append(sum(alone) / len(alone))
            rows["nfe_alone_max"].append(max(alone))
    mean = {key: round(sum(values) / len(values), 4) for key, values in rows.items()}
    print(json.dumps({"run": str(run_dir), "experiment": config.name, "batch": size, "window": window,
                      "batches": batches, "rtol": dynamics.rtol, "atol": dynamics.atol, **mean}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run_dir in args.run_dirs:
        measure(run_dir, batches=args.batches, window=args.window)


if __name__ == "__main__":
    main()
