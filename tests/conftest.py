import os

import pytest
import torch

# Tests never touch the network; a hub lookup fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the parallel tests run 4 CPU processes on machines with fewer cores (correctness, not speed)
os.environ.setdefault("VIDEOSYS_ALLOW_OVERSUBSCRIBE", "1")
# VIDEOSYS_TEST_THREADS=1 when another job shares the cores (two busy threads on one core run ~30x slower)
torch.set_num_threads(int(os.environ.get("VIDEOSYS_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture(scope="session")
def tiny_latte():
    from videosys import LatteConfig, LattePipeline

    return LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False))
