"""Speed of K seeds trained in one process with `train(config, seeds=...)`'s vectorised step, against one solo run.

Usage: python benchmarks/bench_multiseed.py [--repeats N] [--seeds 1 4 16] [--configs vdp push]

One training iteration as `train` runs it (objective + backward + gradient clipping + Adam), at full loss
weights (as the speed reference times it), on the paper's vdp and push sizes. Prints one JSON line per measurement:
  multiseed_<config>_solo   one model, the solo `train` step;
  multiseed_<config>_k<K>   K stacked models under `vmap` (`train(config, seeds=[...])`): `median_s` per
                            iteration of all K, `per_run_s` = median_s / K, `solo_s` the solo step measured
                            in the same process, `speedup` = K * solo_s / median_s.
Every measurement uses one CPU thread and is the median of `--repeats` timed iterations after warm-up.
"""

import torch
from torch.func import stack_module_state

from common import CONFIGS, benchmark_parser, parse_single_threaded, report, time_it
from replay_overshooting.models import EKFModel
from replay_overshooting.training import (
    ExperimentConfig, _adam, _clip_per_seed, _LossModule, _stacked_losses, compute_loss,
)

FULL_WEIGHTS = 10**6  # an iteration past every burn-in and annealing ramp


def models_and_data(cfg, num_models):
    "`num_models` models of one paper-size configuration (seeds 0, 1, ...) and random batches `(K, B, T, ·)`."
    models = []
    for seed in range(num_models):
        torch.manual_seed(seed)
        models.append(EKFModel(cfg["latent_dim"], cfg["obs_dim"], cfg["ctrl_dim"], hidden=cfg["hidden"]))
    y = torch.randn(num_models, cfg["batch"], cfg["T"], cfg["obs_dim"])
    u = torch.randn(num_models, cfg["batch"], cfg["T"], cfg["ctrl_dim"]) if cfg["ctrl_dim"] else None
    return models, y, u


def solo_step(cfg, config):
    "The step of a solo `train` run."
    (model,), y, u = models_and_data(cfg, 1)
    optimizer = _adam(model.parameters(), config.lr)

    def step():
        loss, _ = compute_loss(model, config, y[0], None if u is None else u[0], FULL_WEIGHTS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        loss.item()
    return step


def vectorised_step(cfg, config, num_models):
    "The step of `train(config, seeds=[...])` with `num_models` seeds."
    models, y, u = models_and_data(cfg, num_models)
    params, buffers = stack_module_state([_LossModule(m, config) for m in models])
    base = _LossModule(models[0], config)
    optimizer = _adam(params.values(), config.lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        losses, _ = _stacked_losses(base, params, buffers, y, u, FULL_WEIGHTS)
        losses.sum().backward()
        _clip_per_seed(list(params.values()), config.grad_clip)
        optimizer.step()
        losses.tolist()
    return step


def main():
    parser = benchmark_parser(__doc__, repeats=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 16], help="the numbers K of stacked seeds")
    parser.add_argument("--configs", nargs="+", default=["vdp", "push"], choices=["vdp", "push"])
    args = parse_single_threaded(parser)
    config = ExperimentConfig(model="ekf", objective="vro", grad_clip=100.0)
    for name in args.configs:
        cfg = CONFIGS[name]
        solo_s, lo, hi = time_it(solo_step(cfg, config), repeats=args.repeats)
        report(f"multiseed_{name}_solo", solo_s, lo, hi, num_seeds=1)
        for num_models in args.seeds:
            med, lo, hi = time_it(vectorised_step(cfg, config, num_models), repeats=args.repeats)
            report(f"multiseed_{name}_k{num_models}", med, lo, hi, num_seeds=num_models,
                   per_run_s=round(med / num_models, 5), solo_s=round(solo_s, 5),
                   speedup=round(num_models * solo_s / med, 2))


if __name__ == "__main__":
    main()
