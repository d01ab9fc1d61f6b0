"""What each backend and each piece of the C++ extension saves of a training iteration (`vro` + backward + Adam).

Usage: python benchmarks/bench_backends.py [--repeats N] [--rounds R] [--configs vdp push pend]

For the paper-size configurations (`common.CONFIGS`, the paper's architecture: 4 hidden layers in the
dynamics, 3 in the observation network) it times one training iteration with

  reference      the plain step functions, differentiated by autograd (`backend="reference"`)
  fused          the fused Python autograd nodes (`backend="fused"`)
  native         the C++ loops (`backend="native"`, what `auto` picks on a CPU)

and `native` with one piece of the extension replaced by its fused Python node, to show what that piece saves:

  -gaussian      the small-system kernels of the Gaussian log-density, KL and solves (`gaussian._native_loops`)
  -obs_cov       the observation covariances `C Σ Cᵀ + R` of whole windows
  -rts           the RTS recursion
  -batched_mlp   the batched network passes outside the recursions (value and Jacobian, time update)

The variants are timed in turn, `--rounds` times, each time the median of `--repeats` iterations, all in one
process on one thread. The figure is the fastest round: on a shared machine other work can only slow a round
down, and rounds of one variant here varied by up to 1.5x, far more than the pieces' effects. A piece saves
`(t(native - piece) - t(native)) / t(native - piece)` of an iteration; differences of a few percent are noise.
"""
import contextlib
import json

from common import CONFIGS, benchmark_parser, parse_single_threaded, processor, time_it
from bench_train import problem, training_step
from replay_overshooting import ekf, gaussian, models


@contextlib.contextmanager
def replaced(module, name, value):
    "`module.name` set to `value` inside the block."
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


class _PlainObservationCovariance:
    "`ekf._NativeObservationCovariance` with the plain operations (which autograd records) in its place."

    @staticmethod
    def apply(C, cov, R):
        return ekf._observation_covariance(C, cov, R)[0]


def without(piece):
    "A context in which the `native` backend runs `piece` as the fused Python code."
    if piece == "gaussian":
        return replaced(gaussian, "_native_loops", lambda path, L: None)
    if piece == "obs_cov":
        return replaced(ekf, "_NativeObservationCovariance", _PlainObservationCovariance)
    if piece == "rts":
        return replaced(ekf, "_NativeRTSRecursion", ekf._RTSRecursion)
    if piece == "batched_mlp":
        stack = contextlib.ExitStack()
        stack.enter_context(replaced(models, "_NativeMLPValueAndJacobian", models._MLPValueAndJacobian))
        stack.enter_context(replaced(models, "_NativeTimeUpdate", models._ResidualTimeUpdate))
        return stack
    raise ValueError(piece)


VARIANTS = {"reference": ("reference", None), "fused": ("fused", None), "native": ("native", None),
            **{f"-{piece}": ("native", piece) for piece in ("gaussian", "obs_cov", "rts", "batched_mlp")}}


def main():
    parser = benchmark_parser(__doc__, repeats=5)
    parser.add_argument("--rounds", type=int, default=3, help="times each variant is timed, in turn")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    args = parse_single_threaded(parser)
    table = {}
    for config in args.configs:
        model, y, u = problem(**CONFIGS[config])
        step = training_step(model, y, u)
        times = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, (backend, piece) in VARIANTS.items():
                model.backend = backend
                with without(piece) if piece else contextlib.nullcontext():
                    times[name].append(time_it(step, warmup=2, repeats=args.repeats)[0])
        fastest = {name: min(t) for name, t in times.items()}
        table[config] = fastest
        native = fastest["native"]
        for name, seconds in fastest.items():
            line = {"config": config, "variant": name, "fastest_round_s": round(seconds, 5),
                    "rounds_s": [round(t, 5) for t in times[name]], **processor()}
            if name.startswith("-"):
                line["piece_saves"] = round((seconds - native) / seconds, 3)
            print(json.dumps(line), flush=True)
    names = list(VARIANTS)
    print("\n| config | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for config, fastest in table.items():
        native = fastest["native"]
        cells = [f"{fastest[n] * 1e3:.1f} ms" + (f" ({(fastest[n] - native) / fastest[n]:+.0%})" if n.startswith("-")
                                                 else "") for n in names]
        print(f"| {config} | " + " | ".join(cells) + " |")
    print("\nThe fastest of the rounds. In parentheses: the share of an iteration the piece saves (its time without "
          "the piece, minus native's).")


if __name__ == "__main__":
    main()
