"""Speed of one PlaNet (RSSM) or GSSM training iteration: loss + backward + gradient clipping + Adam step.

Usage: python benchmarks/bench_baselines.py [--repeats N]
Prints one JSON line per configuration and recurrence (one CPU thread, median over repeats after warm-up;
the recurrences of a configuration are timed alternately, step by step, on the same model and data, so their
ratios are taken under the same load), then a table beside the paper's code:
- planet_push, oo_planet_push: the paper's rows, obs 2-D, controls 6-D, T=50, batch 16, clip 100;
- gssm_push: the paper's GSSM row on push, T=50, batch 8, clip 100;
- planet_pend_img, gssm_pend_img: the paper's rows, 16x16 frames, 1-D torque, T=33, batch 8, clip 500.
`recurrence` is `RSSM(recurrence=...)`: "plain" is the loop of the model's equations (`rssm_filter`),
"hoisted" moves the work that does not depend on the recursion out of it (`rssm_filter_hoisted`), "native" runs
that loop and its hand-written backward in one C++ node (`rssm_filter_native`; what "auto" takes on a CPU); or
`GSSM(recurrence=...)`: "plain" is the backward GRU (`nn.GRU`) and the posterior loop (`gssm_infer`), "native"
runs each in a C++ node (`gssm_summaries_native`, `gssm_infer_native`; what "auto" takes on a CPU).
"""
import statistics
import time

import torch

from common import benchmark_parser, paper_code_fields, parse_single_threaded, processor, report
from replay_overshooting.backends import native_extension
from replay_overshooting.baselines import RSSM, paper_baseline

CONFIGS = {
    "planet_push": dict(obs_shape=(2,), ctrl_dim=6, T=50, batch=16, clip=100.0),
    "oo_planet_push": dict(obs_shape=(2,), ctrl_dim=6, T=50, batch=16, clip=100.0),
    "gssm_push": dict(obs_shape=(2,), ctrl_dim=6, T=50, batch=8, clip=100.0),
    "planet_pend_img": dict(obs_shape=(16, 16), ctrl_dim=1, T=33, batch=8, clip=500.0),
    "gssm_pend_img": dict(obs_shape=(16, 16), ctrl_dim=1, T=33, batch=8, clip=500.0),
}


def training_step(model, optimizer, y, u, clip):
    "One iteration as the trainer runs it."
    optimizer.zero_grad(set_to_none=True)
    loss, _ = model.loss(y, u)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


def alternating_times(steps: dict, *, warmup: int, repeats: int) -> dict:
    "Time each of `steps` (name → callable) once per round, `repeats` rounds after `warmup`; name → seconds."
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def main():
    args = parse_single_threaded(benchmark_parser(__doc__))
    rows = []
    for name, cfg in CONFIGS.items():
        model = paper_baseline(name)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        y = torch.rand(cfg["batch"], cfg["T"], *cfg["obs_shape"])
        u = torch.randn(cfg["batch"], cfg["T"], cfg["ctrl_dim"])

        def step(recurrence):
            model.recurrence = recurrence
            training_step(model, optimizer, y, u, cfg["clip"])
        recurrences = ("plain", "hoisted", "native") if isinstance(model, RSSM) else ("plain", "native")
        if native_extension() is None:
            recurrences = recurrences[:-1]
        times = alternating_times({r: (lambda r=r: step(r)) for r in recurrences}, warmup=3, repeats=args.repeats)
        for recurrence, seconds in times.items():
            med = statistics.median(seconds)
            extra = {"recurrence": recurrence, **paper_code_fields(name, med)}
            report(f"train_{name}", med, min(seconds), max(seconds), model=name, batch=[cfg["batch"], cfg["T"]],
                   **extra)
            rows.append((name, recurrence, med, extra.get("paper_code_s")))
    print(f"\nOn {processor()['cpu']}; the paper's code on the processor each line's `paper_code_cpu` names.\n\n"
          "| model | recurrence | median s | paper's code s | speed-up |\n|---|---|---|---|---|")
    for name, recurrence, med, paper in rows:
        print(f"| {name} | {recurrence} | {med:.4f} | {paper or ''} | {f'{paper / med:.1f}x' if paper else ''} |")


if __name__ == "__main__":
    main()
