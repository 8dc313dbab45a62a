"""Run by test_distributed.py under torchrun: trains a demo supernet data-parallel, saves this rank's weights."""

import sys
from pathlib import Path

import torch

from model.distributed import init_from_environment, shutdown
from model.space import get_space
from model.supernet import Supernet
from model.trainer import TrainConfig, Trainer
from tests.model.test_trainer import SCHEMA, stream

if __name__ == "__main__":
    out = Path(sys.argv[1])
    world = init_from_environment(torch.device("cpu"))
    torch.manual_seed(world.rank)  # different initial weights per rank: the trainer must broadcast rank 0's
    supernet = Supernet(get_space("demo"), SCHEMA)
    config = TrainConfig(steps=8, lr=0.05, full_path_warmup_steps=3, progress=False)
    Trainer(supernet, config, torch.device("cpu"), out if world.is_main else None, world).fit(stream())
    torch.save(supernet.state_dict(), out / f"rank{world.rank}.pt")
    shutdown(world)
