"""Shared timing helpers for the benchmark scripts (one CPU thread, median of repeated runs)."""
import argparse
import functools
import json
import os
import platform
import statistics
import time

import torch

from replay_overshooting.backends import BACKEND_VARIABLE, BACKENDS, default_backend
from replay_overshooting.native import hold_freed_memory, native_loops

# The reference implementation's seconds per training iteration, one core, CPU, torch 2.13.
REFERENCE_SECONDS = {"vdp": 0.093, "push": 0.354, "pend": 0.150}

# One training iteration (loss, backward, clipping, Adam) of the paper's own code at its registered sizes, on one
# CPU thread in float32, measured beside this library on a 2-core Intel Xeon machine (`PAPER_CODE_CPU`; one round
# each on a loaded machine, so read the speed-ups as ratios). The DT-EKF push model measured 0.41-0.49 s in two
# rounds: the lower. A speed-up taken on another processor (a line's `cpu`) compares across machines.
PAPER_CODE_CPU = "Intel Xeon (Sapphire Rapids, AVX-512)"
PAPER_CODE_SECONDS = {"dt_ekf_push": 0.41, "planet_push": 0.105, "oo_planet_push": 0.243, "planet_pend_img": 15.6,
                      "ct_ekf_push": 2.63, "dt_ekf_kvae_pend_img": 18.8, "le_ekf_push": 2.80,
                      "ct_ekf_kvae_pend_img": 19.3}

# The paper's code timed on other processors, by `processor()`'s `cpu` and `cpu_capability`, with
# `paper_code_push.py` alternating with `bench_train.py`'s measurement of the same experiment: a line run on
# one of them takes that figure. On the AMD EPYC (Zen 3, 2 vCPUs, no AVX-512; its name as the virtual machine
# reports it), the lowest median of several rounds (DT-EKF: thirteen of 20 iterations, 0.493-0.693 s; PlaNet: three
# of 20; GSSM: eight of 20 or 30, 0.0759-0.125 s; CT-EKF: eight of 5, 3.48-6.48 s, 792 solver evaluations an
# iteration where they were counted, as in ours).
PAPER_CODE_HERE = {("AMD EPYC", "AVX2"): ("AMD EPYC (Zen 3, AVX2)", {
    "dt_ekf_push": 0.493, "planet_push": 0.1236, "gssm_push": 0.0759, "ct_ekf_push": 3.48})}

# The paper-size configurations: latent n, observation p, control m, window T, batch B, hidden units.
CONFIGS = {
    "vdp": dict(latent_dim=2, obs_dim=2, ctrl_dim=0, T=21, batch=8, hidden=32),
    "push": dict(latent_dim=8, obs_dim=2, ctrl_dim=6, T=50, batch=16, hidden=64),
    "pend": dict(latent_dim=3, obs_dim=2, ctrl_dim=1, T=33, batch=4, hidden=64),
}


def time_it(fn, *, warmup=3, repeats=15):
    "Run `fn` `warmup` times, then time `repeats` runs; returns (median, min, max) seconds."
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def count_ops(fn):
    "Number of ATen operator calls (forward and backward) made by one call of `fn`."
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None
               or (e.name.startswith("aten::") and e.cpu_parent is not None
                   and not e.cpu_parent.name.startswith("aten::")))


_held_freed_memory = False  # set by `parse_single_threaded`


def cpp_loops_on() -> bool:
    "Whether the C++ loops are built and the default backend (`$REPLAY_OVERSHOOTING_BACKEND`) takes them."
    return default_backend() in ("auto", "native") and native_loops() is not None


@functools.cache
def processor() -> dict:
    """The processor this process runs on: `cpu`, its model name (Linux's `/proc/cpuinfo`, else `platform`), and
    `cpu_capability`, the widest vector instructions ATen's kernels use here (`AVX512`, `AVX2`, `DEFAULT` …)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    return {"cpu": name, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def paper_code_time(experiment):
    """The paper's code's seconds an iteration of `experiment` and the processor they were timed on: this one's
    where the paper's code was timed on it (`PAPER_CODE_HERE`), else `PAPER_CODE_CPU`'s; (None, None) where never."""
    here = processor()
    cpu, seconds = PAPER_CODE_HERE.get((here["cpu"], here["cpu_capability"]), (None, {}))
    if experiment in seconds:
        return seconds[experiment], cpu
    if experiment in PAPER_CODE_SECONDS:
        return PAPER_CODE_SECONDS[experiment], PAPER_CODE_CPU
    return None, None


def paper_code_fields(experiment, median_s) -> dict:
    "`paper_code_s`, the processor it was timed on and the speed-up, where the paper's code was timed; else none."
    paper, cpu = paper_code_time(experiment)
    if paper is None:
        return {}
    return {"paper_code_s": paper, "paper_code_cpu": cpu, "speedup": round(paper / median_s, 2)}


def report(config, median_s, min_s, max_s, **extra):
    """Print one JSON line of results: `backend` is the default backend every call of this process ran with
    (`--backend`), `cpp_loops` whether the C++ recursions (`03a_native_loops`) ran (by default whether that backend
    may take them and they are built, which the discrete-time EKF with eager kernels on CPU then uses; callers
    that know the model pass it), and `held_freed_memory` whether malloc keeps freed memory as `train` has it do
    on CPU (`hold_freed_memory`); `cpu` and `cpu_capability` the processor (`processor`)."""
    print(json.dumps({"config": config, "median_s": round(median_s, 5), "min_s": round(min_s, 5),
                      "max_s": round(max_s, 5), "backend": default_backend(), "cpp_loops": cpp_loops_on(),
                      "held_freed_memory": _held_freed_memory, **processor(), **extra}), flush=True)


def benchmark_parser(description, *, repeats=15):
    "The argument parser of a benchmark script: its docstring as help, and `--repeats`."
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per configuration")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="the default backend of every call (00b_backends): reference, fused, native or auto "
                             "(the library's default)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave malloc's settings alone (by default they are those `train` sets on CPU)")
    return parser


def parse_single_threaded(parser):
    "Parse the command line, then pin torch to one thread and seed it, as every measurement here assumes."
    args = parser.parse_args()
    if args.backend is not None:  # the default backend of every call in this process
        os.environ[BACKEND_VARIABLE] = args.backend
    global _held_freed_memory
    _held_freed_memory = not args.default_malloc and hold_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return args
