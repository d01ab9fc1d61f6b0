"""Speed of the EKF core: forward + backward of filter, smoother and whole-window replay (one training loss).

Usage: python benchmarks/bench_ekf.py [--repeats N] [--backend NAME]
Prints one JSON line per paper-size configuration, then a table beside the reference times.
"""

import torch

from common import (
    CONFIGS, REFERENCE_SECONDS, benchmark_parser, count_ops, parse_single_threaded, report, time_it)
from replay_overshooting.ekf import observation_moments
from replay_overshooting.gaussian import mvn_kl, mvn_log_prob
from replay_overshooting.models import EKFModel


def loss_work(model, y, u):
    "Filter, smoother, replay from the smoothed initial belief, and every likelihood/KL term; then backward."
    filtered, smoothed = model.smooth(y, u)
    replay = model.predict(smoothed.smoothed_means[:, 0], smoothed.smoothed_covs[:, 0], y.shape[1], u)
    R = model.obs_cov()
    smooth_mean, smooth_cov = observation_moments(model.observation, smoothed.smoothed_means,
                                                  smoothed.smoothed_covs, obs_cov=R)
    replay_mean, replay_cov = observation_moments(model.observation, replay.means, replay.covs, obs_cov=R)
    loss = -(filtered.log_likelihoods.mean() + mvn_log_prob(y, smooth_mean, smooth_cov).mean()
             + mvn_log_prob(y, replay_mean, replay_cov).mean())
    loss = loss + mvn_kl(smoothed.smoothed_means, smoothed.smoothed_covs, smoothed.prior_means,
                         smoothed.prior_covs).mean()
    loss.backward()


def main():
    args = parse_single_threaded(benchmark_parser(__doc__))
    rows = []
    for name, cfg in CONFIGS.items():
        model = EKFModel(cfg["latent_dim"], cfg["obs_dim"], cfg["ctrl_dim"], hidden=cfg["hidden"])
        y = torch.randn(cfg["batch"], cfg["T"], cfg["obs_dim"])
        u = torch.randn(cfg["batch"], cfg["T"], cfg["ctrl_dim"]) if cfg["ctrl_dim"] else None

        def step():
            model.zero_grad(set_to_none=True)
            loss_work(model, y, u)

        med, lo, hi = time_it(step, repeats=args.repeats)
        ops = count_ops(step)
        ref = REFERENCE_SECONDS[name]
        report(name, med, lo, hi, ops=ops, reference_s=ref, speedup=round(ref / med, 2))
        rows.append((name, med, ref, ops))
    print("\n| config | median s | reference s (whole iteration) | speed-up | aten ops |\n|---|---|---|---|---|")
    for name, med, ref, ops in rows:
        print(f"| {name} | {med:.4f} | {ref:.3f} | {ref / med:.1f}x | {ops} |")


if __name__ == "__main__":
    main()
