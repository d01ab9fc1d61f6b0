"""Speed of dataset generation and cached reloads, on one CPU thread.

Usage: python benchmarks/bench_data.py [--skip-push-sim]
Prints one JSON line per measurement (seconds of wall-clock time, each in a fresh temporary data directory):
- pendulum_images_generate: the paper-size training set, 10,000 sequences x 101 frames of 16x16, simulated,
  rendered and written to the HDF5 cache (target < 60 s);
- pendulum_images_reload: the same call again, reading the cache (target < 2 s);
- small_<name>: an 8-sequence set of each generated dataset without the cache (target well under 1 s);
- push_sim_generate / push_sim_reload: the default push_sim set (1,600 simulated pushes, the Kloss file
  layout) written and read through the mit_push loader, then read again.
"""
import argparse
import json
import tempfile
import time

import torch

from replay_overshooting.data import load_dataset


def timed(function):
    "Run `function()` once; return its result and the wall-clock seconds it took."
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def report(name, seconds, **extra):
    print(json.dumps({"benchmark": name, "seconds": round(seconds, 3), "threads": torch.get_num_threads(), **extra}),
          flush=True)


def bench_pendulum_images():
    with tempfile.TemporaryDirectory() as data_dir:
        first, seconds = timed(lambda: load_dataset("pendulum_images", "train", data_dir))
        report("pendulum_images_generate", seconds, num_sequences=len(first), seq_len=first.y.shape[1],
               frame_megabytes=round(first.y.numel() / 1e6, 1), target_seconds=60)
        second, seconds = timed(lambda: load_dataset("pendulum_images", "train", data_dir))
        if not torch.equal(first.y, second.y):
            raise RuntimeError("the cached frames differ from the generated ones")
        report("pendulum_images_reload", seconds, target_seconds=2)


def bench_small_sets():
    for name in ("vdp", "pendulum", "pendulum_xy", "pendulum_images"):
        _, seconds = timed(lambda: load_dataset(name, "train", num_sequences=8, cache=False))
        report(f"small_{name}", seconds, num_sequences=8, target_seconds=1)


def bench_push_sim():
    with tempfile.TemporaryDirectory() as data_dir:
        first, seconds = timed(lambda: load_dataset("push_sim", "train", data_dir))
        report("push_sim_generate", seconds, num_sequences=len(first), seq_len=first.y.shape[1])
        _, seconds = timed(lambda: load_dataset("push_sim", "train", data_dir))
        report("push_sim_reload", seconds, num_sequences=len(first))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-push-sim", action="store_true", help="leave out the push_sim measurements")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_small_sets()
    bench_pendulum_images()
    if not args.skip_push_sim:
        bench_push_sim()


if __name__ == "__main__":
    main()
