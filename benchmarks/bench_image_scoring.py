"""Speed of scoring image forecasts as evaluation does: one test batch, F = 5 filtered frames, P predicted.

Usage: python benchmarks/bench_image_scoring.py [--repeats N] [--predict-steps P ...]
Prints one JSON line per (model, P, method): one CPU thread, median/min/max seconds over the repeats
(no warm-up: one run takes seconds to minutes).
Models: the pendulum image DT-EKF (`dt_ekf_kvae_pend_img`) and PlaNet (`planet_pend_img`), untrained,
on 32 sequences of random 16x16 frames with S = 100 predictive samples. Methods:
- `logaddexp`: the mixture as the library built it before, written out below: decode the samples in
  chunks, `log_softmax` each, and accumulate `logaddexp` over the (B, P, H, W, 256) predictive;
- `full`: `forecast(...)`, the whole (B, P, H, W, 256) predictive through `frame_mixture`;
- `scored`: `forecast(..., score_frames=truth)`, the NLL of the true frames only, which evaluation uses.
Each line also gives the largest difference of the per-frame NLLs from those of `logaddexp`.
"""
import math
import statistics
import time

import torch

from common import benchmark_parser, parse_single_threaded, report
from replay_overshooting.baselines import paper_baseline, rssm_filter, sample_diag_gaussian
from replay_overshooting.image_models import ImageEKFModel, image_nll

BATCH, FILTER, SAMPLES, SIZE = 32, 5, 100, 16


def ekf_logaddexp_nll(model, frames, torques, steps, generator):
    "Per-frame NLL `(B, P)` through the former mixture: chunks of samples, log_softmax, running logaddexp."
    mean, _ = model.encode(frames[:, :FILTER])
    samples = model.ekf.forecast(mean, torques, predict_steps=steps, num_samples=SAMPLES,
                                 generator=generator).samples  # (S, B, P, p)
    S, B, P, p = samples.shape
    chunk = max(1, 512 // (B * P))
    log_mixture = None
    for start in range(0, S, chunk):
        block = samples[start:start + chunk]
        k = block.shape[0]
        logits = model.decode(block.transpose(0, 1).reshape(B, k * P, p))
        block_lse = logits.view(B, k, P, SIZE, SIZE, 256).log_softmax(-1).logsumexp(1)
        log_mixture = block_lse if log_mixture is None else torch.logaddexp(log_mixture, block_lse)
    return image_nll(log_mixture - math.log(S), frames[:, FILTER:])


def planet_logaddexp_nll(model, frames, torques, steps, generator):
    "Per-frame NLL `(B, P)` of PlaNet's former mixture: one sample at a time, running logaddexp."
    y, u = frames[:, :FILTER], torques.repeat(SAMPLES, 1, 1)
    embeddings = model.observations.embed(y).repeat(SAMPLES, 1, 1)
    states = rssm_filter(model, embeddings, u[:, :FILTER], generator=generator)
    h, s = states.deterministic[:, -1], states.stochastic[:, -1]
    features = []
    for t in range(FILTER, FILTER + steps):
        h = model.transition(h, s, u[:, t - 1])
        s = sample_diag_gaussian(*model.prior(h), generator)
        features.append(torch.cat([h, s], -1))
    features = torch.stack(features, 1).reshape(SAMPLES, BATCH, steps, -1)
    log_mixture = None
    for sample_features in features:
        log_probs = model.observations.logits(sample_features).log_softmax(-1)
        log_mixture = log_probs if log_mixture is None else torch.logaddexp(log_mixture, log_probs)
    return image_nll(log_mixture - math.log(SAMPLES), frames[:, FILTER:])


def main():
    parser = benchmark_parser(__doc__, repeats=1)
    parser.add_argument("--predict-steps", type=int, nargs="+", default=[20, 50])
    args = parse_single_threaded(parser)
    models = {"dt_ekf_kvae_pend_img": (ImageEKFModel(3, 2, 1, noise="factor_diagonal").eval(), ekf_logaddexp_nll),
              "planet_pend_img": (paper_baseline("planet_pend_img").eval(), planet_logaddexp_nll)}
    for steps in args.predict_steps:
        frames = torch.rand(BATCH, FILTER + steps, SIZE, SIZE)
        torques = torch.randn(BATCH, FILTER + steps, 1)
        truth = frames[:, FILTER:]
        for name, (model, logaddexp_nll) in models.items():
            def draw():
                return dict(predict_steps=steps, num_samples=SAMPLES, generator=torch.Generator().manual_seed(0))

            methods = {
                "logaddexp": lambda: logaddexp_nll(model, frames, torques, steps, torch.Generator().manual_seed(0)),
                "full": lambda: image_nll(model.forecast(frames[:, :FILTER], torques, **draw()).pixel_log_probs, truth),
                "scored": lambda: model.forecast(frames[:, :FILTER], torques, score_frames=truth, **draw()).frame_nll,
            }
            reference = None
            with torch.no_grad():
                for method, run in methods.items():
                    seconds = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        nll = run()
                        seconds.append(time.perf_counter() - start)
                    reference = nll if reference is None else reference
                    report(f"{name} P={steps} {method}", statistics.median(seconds), min(seconds), max(seconds),
                           max_nll_difference=(nll - reference).abs().max().item(), batch=BATCH, samples=SAMPLES)


if __name__ == "__main__":
    main()
