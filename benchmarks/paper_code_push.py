"""Time one training iteration of the paper's own code (Li, Wu & Kennedy, ICRA 2021: github.com/wuphilipp/replay-overshooting)
on one of its push experiments, to set beside `bench_train.py`'s `registered_*` line of that experiment on the same
machine.

Usage: python benchmarks/paper_code_push.py CHECKOUT EXPERIMENT [N]

EXPERIMENT is one of `dt_ekf_push`, `ct_ekf_push`, `planet_push`, `gssm_push`.

CHECKOUT is a checkout of that repository whose `dynamics_learning` package imports (with its dependencies,
e.g. `fannypack`, importable, or in CHECKOUT/deps); N timed iterations (default 20) follow 3 warm-up ones, on one CPU
thread in float32. One iteration is the per-batch work of the reference's `training.experiments.train` without its
logging and checkpoints: `prep_batch`, `runtime_data_preprocess`, `estimator.loss` (filter, smoother, replay
overshooting, KL) at iteration 10,000 (its window at the full T = 50 and every ramp complete), and
`Buddy.minimize` (zero_grad, backward, gradient clipping, Adam), then `loss.item()`. The experiment's config is that of
`scripts/paper_experiments/mit_push/EXPERIMENT/train_EXPERIMENT.py`, run without its two calls (`pdb_safety_net`,
`train`). The batch is random data in the push data set's format (the config's B, T = 50: observations N(0, 1), four
control columns N(0, 1) and a one-hot contact flag); from the fresh initialisation an EKF's 50-step replay prediction
overflows float32 (the reference asserts), so its dynamics network's output weights are scaled by 0.1, as training's
2-to-50-step curriculum would have made it stable; values only, not what is computed. Prints one line:
`paper EXPERIMENT: min S median S`; for the continuous-time EKF also `nfe N ms_per_evaluation X`, the field
evaluations of an iteration's forward pass (every call the solver makes to the function it integrates, in the
filter, the smoother's predictions and the replay; the median over the timed iterations), as `bench_train.py`'s
`nfe` counts ours.
"""
import ast
import os
import random
import statistics
import sys
import tempfile
import time
import warnings

LATE_ITERATION = 10_000
WARMUP = 3


EXPERIMENTS = ("dt_ekf_push", "ct_ekf_push", "planet_push", "gssm_push")


def experiment_config(checkout, experiment):
    "The script's `exp_config`, its side-effecting calls left out."
    path = os.path.join(checkout, f"scripts/paper_experiments/mit_push/{experiment}/train_{experiment}.py")
    tree = ast.parse(open(path).read())
    tree.body = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                 and getattr(node.value.func, "id", None) in ("train", "pdb_safety_net"))]
    namespace = {"__name__": f"paper_{experiment}_config"}
    exec(compile(tree, path, "exec"), namespace)
    return namespace["exp_config"]


def random_batch(rng, B, T, p, m, dt=0.01):
    "(time (B,T), observations (B,T,p), controls (B,T,m)) as the push data set's loader yields them."
    import numpy as np
    import torch
    y = rng.standard_normal((B, T, p))
    u = np.zeros((B, T, m))
    u[..., :m - 2] = rng.standard_normal((B, T, m - 2))
    u[..., m - 2:] = np.eye(2)[rng.integers(0, 2, size=(B, T))]
    t = np.tile(np.arange(T) * dt, (B, 1))
    return torch.from_numpy(t), torch.from_numpy(y), torch.from_numpy(u)


class EvaluationCounter:
    "Counts the calls every `odeint` of the given modules makes to the function it integrates."

    def __init__(self, modules):
        self.count = 0
        for module in modules:
            if hasattr(module, "odeint"):
                module.odeint = self.counting(module.odeint)

    def counting(self, odeint):
        def counted_odeint(func, *args, **kwargs):
            def counted_func(t, z):
                self.count += 1
                return func(t, z)
            return odeint(counted_func, *args, **kwargs)
        return counted_odeint


def main(checkout, experiment, iterations):
    sys.path[:0] = [checkout, os.path.join(checkout, "deps")]
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    from fannypack.utils import Buddy
    from dynamics_learning.training.experiments import runtime_data_preprocess
    from dynamics_learning.utils.data_utils import prep_batch
    from dynamics_learning.networks import dynamics as dynamics_module
    from dynamics_learning.networks.kalman import ekf as ekf_module

    torch.set_num_threads(1)
    config = experiment_config(checkout, experiment)
    np.random.seed(2), torch.manual_seed(2), random.seed(2)  # as the reference's train(deterministic=True)
    estimator = config.model.create()
    dynamics = getattr(getattr(estimator, "cell", None), "_dynamics", None)
    if hasattr(dynamics, "_net"):  # an EKF's
        with torch.no_grad():
            dynamics._net[-1].weight.mul_(0.1)
    scratch = tempfile.mkdtemp(prefix="paper_code_")
    buddy = Buddy(config.name, estimator, optimizer_type="adam", metadata_dir=scratch,
                  checkpoint_dir=os.path.join(scratch, "checkpoints"), log_dir=os.path.join(scratch, "logs"),
                  optimizer_checkpoint_interval=0, verbose=False, cpu_only=True)
    buddy.set_learning_rate(lambda step: config.learning_rate_function(step, config.base_learning_rate))
    buddy._optimizer_config.global_steps = LATE_ITERATION
    B, T, p, m = config.batch_size, config.model.dataset.traj_len, config.model.dataset.obs_shape[0], config.model.ctrl_dim
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, B, T, p, m) for _ in range(4)]

    def step(i):
        _, t, y, u = prep_batch(batches[i % len(batches)], buddy.device)
        t, y, u, _ = runtime_data_preprocess(config, LATE_ITERATION, t, y, u)
        loss = estimator.loss(t, y, u, LATE_ITERATION, avg=True)
        buddy.minimize(loss, clip_grad_max_norm=config.gradient_clip_max_norm)
        return loss.item()

    counter = EvaluationCounter([ekf_module, dynamics_module])
    estimator.train()
    for i in range(WARMUP):
        step(i)
    times, evaluations = [], []
    for i in range(iterations):
        counter.count = 0
        start = time.perf_counter()
        step(WARMUP + i)
        times.append(time.perf_counter() - start)
        evaluations.append(counter.count)
    line = f"paper {experiment}: min {min(times):.4f} median {statistics.median(times):.4f}"
    nfe = statistics.median(evaluations)
    if nfe:
        line += f" nfe {nfe:g} ms_per_evaluation {1e3 * statistics.median(times) / nfe:.3f}"
    print(line)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] not in EXPERIMENTS:
        sys.exit(__doc__)
    main(os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20)
