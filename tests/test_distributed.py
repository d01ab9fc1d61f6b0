"""DistributedDataParallel: two CPU processes (gloo) train the same weights as one process on the whole batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from replay_overshooting.training import get_experiment, train

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_two_ranks(config, tmp_path, *worker_args):
    "Train `config` under torchrun with two processes; the ranks save their weights as rank0.pt, rank1.pt."
    config.save(tmp_path / "config.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(tmp_path / "config.json"), str(tmp_path), *worker_args],
        capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_match_each_other_and_a_single_process(tmp_path):
    config = get_experiment("example", max_iterations=4, batch_size=8, dtype="float64", device="cpu",
                            dataset_options={"num_sequences": 16, "seq_len": 21, "cache": False})
    run_two_ranks(config, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    single = train(config, progress=False, run_dir=tmp_path / "single").model.state_dict()
    initial = train(config.replace(max_iterations=1, lr=1e-12), progress=False,
                    run_dir=tmp_path / "initial").model.state_dict()
    assert (tmp_path / "run" / "model.pt").exists() and (tmp_path / "run" / "metrics.csv").exists()
    moved = False
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-9, atol=1e-10)
        moved |= not torch.allclose(rank0[key], initial[key])
    assert moved, "training did not change the weights"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_cpu_training_uses_gloo_on_a_machine_with_a_gpu(tmp_path):
    "The backend follows the training device, not the machine: NCCL cannot reduce CPU tensors."
    config = get_experiment("example", max_iterations=2, batch_size=4, device="cpu",
                            dataset_options={"num_sequences": 8, "seq_len": 11, "cache": False})
    run_two_ranks(config, tmp_path, "pretend-cuda")
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
