"""Speed of one training iteration of the image EKF (loss + backward + Adam step), pendulum configuration.

Usage: python benchmarks/bench_image.py [--repeats N]
Prints one JSON line per configuration (one CPU thread, median/min/max seconds over the timed repeats).
"""

import torch

from common import benchmark_parser, parse_single_threaded, report, time_it
from replay_overshooting.image_models import ImageEKFModel

# the paper's training protocol dt_ekf_kvae_pend_img: state 3, image latent 2, one control, 16x16 frames, window 33, batch 4,
# EKF MLPs 3x64, VRO with alpha 0.5 and beta 2; iteration past burn-in and KL annealing (every term at full weight).
PENDULUM = dict(latent_dim=3, obs_dim=2, ctrl_dim=1, image_size=16, batch=4, T=33, hidden=64)
FULL_WEIGHT_ITERATION = 10_000


def main():
    args = parse_single_threaded(benchmark_parser(__doc__))
    cfg = PENDULUM
    for objective in ("vro", "sro"):
        model = ImageEKFModel(cfg["latent_dim"], cfg["obs_dim"], cfg["ctrl_dim"], image_size=cfg["image_size"],
                              hidden=cfg["hidden"], objective=objective, alpha=0.5, beta=2.0)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        size = cfg["image_size"]
        images = torch.randint(0, 256, (cfg["batch"], cfg["T"], size, size), dtype=torch.uint8)
        u = torch.randn(cfg["batch"], cfg["T"], cfg["ctrl_dim"])

        def step():
            optimiser.zero_grad(set_to_none=True)
            loss, _ = model.loss(images, u, iteration=FULL_WEIGHT_ITERATION)
            loss.backward()
            optimiser.step()

        median, low, high = time_it(step, repeats=args.repeats)
        name = "train_image_ekf_pend" if objective == "vro" else f"train_image_ekf_pend_{objective}"
        report(name, median, low, high, objective=objective, batch=cfg["batch"], T=cfg["T"],
               parameters=sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
