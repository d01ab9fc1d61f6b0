"""Losses and gradients of every registered experiment, in float64, on fixed weights and data: the check that a refactor
changed no number.

    python benchmarks/loss_fingerprint.py save before.pt      # on the commit before a change
    python benchmarks/loss_fingerprint.py compare before.pt   # after it: prints the largest relative difference
    REPLAY_OVERSHOOTING_BACKEND=reference python benchmarks/loss_fingerprint.py compare before.pt  # another backend

Each experiment's model is built with seed 0 for data shaped like its dataset (push: p = 2, m = 6; pendulum images:
16 × 16 frames of grey levels as floats in [0, 1], m = 1; ...), and scored on one random batch at two iterations (0, and 5000, past every ramp). The
files need no dataset: the data are random, drawn from a fixed seed.
"""
import argparse
import sys
from types import SimpleNamespace

import torch

from replay_overshooting.training import EXPERIMENTS, build_model, compute_loss

# observation shape and control dimension of each dataset's sequences
SHAPES = {"vdp": ((2,), 0), "mit_push": ((2,), 6), "push_sim": ((2,), 6), "pendulum_images": ((16, 16), 1),
          "pendulum_xy": ((2,), 1), "pendulum": ((2,), 1)}
ITERATIONS = (0, 5000)


def batch(config, generator):
    "A random batch `(y, u)` shaped like the experiment's data: `(B, T, p)` or `(B, T, 16, 16)` grey levels in [0, 1], `(B, T, m)`."
    obs_shape, m = SHAPES[config.dataset]
    B, T = 3, 12
    if len(obs_shape) == 2:
        y = torch.randint(0, 256, (B, T, *obs_shape), generator=generator).double() / 255
    else:
        y = torch.randn(B, T, *obs_shape, generator=generator, dtype=torch.float64)
    u = torch.randn(B, T, m, generator=generator, dtype=torch.float64) if m else None
    return y, u


def fingerprint(name, config):
    "`{iteration: (loss, {parameter name: gradient})}` of one experiment."
    obs_shape, m = SHAPES[config.dataset]
    shape = SimpleNamespace(is_image=len(obs_shape) == 2, obs_dim=obs_shape[0] if len(obs_shape) == 1 else None,
                            obs_shape=obs_shape, ctrl_dim=m, name=config.dataset)
    torch.manual_seed(0)
    model = build_model(config, shape).double()
    y, u = batch(config, torch.Generator().manual_seed(1))
    out = {}
    for iteration in ITERATIONS:
        torch.manual_seed(2)  # the sampling models draw noise
        model.zero_grad()
        loss, _ = compute_loss(model, config, y, u, iteration)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        out[iteration] = (loss.detach(), grads)
    return out


def all_fingerprints():
    return {name: fingerprint(name, config) for name, config in sorted(EXPERIMENTS.items())}


def largest_difference(before, after):
    "`{experiment: max relative difference over the loss and every gradient}`."
    result = {}
    for name, runs in before.items():
        worst = 0.0
        for iteration, (loss, grads) in runs.items():
            loss2, grads2 = after[name][iteration]
            pairs = [(loss, loss2)] + [(g, grads2[k]) for k, g in grads.items()]
            if set(grads) != set(grads2):
                raise SystemExit(f"{name}: parameters differ: {sorted(set(grads) ^ set(grads2))}")
            for a, b in pairs:
                worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-300)))
        result[name] = worst
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("path")
    parser.add_argument("--tolerance", type=float, default=1e-10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    now = all_fingerprints()
    if args.action == "save":
        torch.save(now, args.path)
        print(f"saved the losses and gradients of {len(now)} experiments to {args.path}")
        return 0
    differences = largest_difference(torch.load(args.path), now)
    for name, worst in differences.items():
        print(f"{name:32s} {worst:.1e}")
    failed = [name for name, worst in differences.items() if not worst <= args.tolerance]
    print(f"largest relative difference {max(differences.values()):.1e}; "
          + (f"{len(failed)} above {args.tolerance:g}: {failed}" if failed else f"all within {args.tolerance:g}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
