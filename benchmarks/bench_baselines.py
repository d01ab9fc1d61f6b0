"""Speed of one PlaNet (RSSM) training iteration: loss + backward + gradient clipping + Adam step.

Usage: python benchmarks/bench_baselines.py [--repeats N]
Prints one JSON line per configuration (one CPU thread, median over repeats after warm-up):
- train_planet_pend_img: the paper's training protocol row planet_pend_img, 16x16 frames, 1-D torque, T=33, batch 8, clip 500;
- train_planet_push: the paper's training protocol row planet_push, obs 2-D, controls 6-D, T=50, batch 16, clip 100.
"""

import torch

from common import benchmark_parser, parse_single_threaded, report, time_it
from replay_overshooting.baselines import paper_baseline

CONFIGS = {
    "train_planet_pend_img": dict(model="planet_pend_img", obs_shape=(16, 16), ctrl_dim=1, T=33, batch=8, clip=500.0),
    "train_planet_push": dict(model="planet_push", obs_shape=(2,), ctrl_dim=6, T=50, batch=16, clip=100.0),
}


def training_step(model, optimizer, y, u, clip):
    "One iteration as the trainer runs it."
    optimizer.zero_grad(set_to_none=True)
    loss, _ = model.loss(y, u)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


def main():
    args = parse_single_threaded(benchmark_parser(__doc__))
    for name, cfg in CONFIGS.items():
        model = paper_baseline(cfg["model"])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        y = torch.rand(cfg["batch"], cfg["T"], *cfg["obs_shape"])
        u = torch.randn(cfg["batch"], cfg["T"], cfg["ctrl_dim"])
        med, lo, hi = time_it(lambda: training_step(model, optimizer, y, u, cfg["clip"]), repeats=args.repeats)
        report(name, med, lo, hi)


if __name__ == "__main__":
    main()
