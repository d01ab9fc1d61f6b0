"""Run by tests/test_distributed.py under torchrun: train the tiny example and save this rank's weights.
A third argument `pretend-cuda` makes `torch.cuda.is_available()` true, as on a machine with a GPU."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from replay_overshooting.training import ExperimentConfig, train

if sys.argv[3:] == ["pretend-cuda"]:
    torch.cuda.is_available = lambda: True
config = ExperimentConfig.load(sys.argv[1])
out = Path(sys.argv[2])
result = train(config, progress=False, run_dir=out / "run")
rank = dist.get_rank()
torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
dist.destroy_process_group()
