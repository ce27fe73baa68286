import os

import pytest
import torch

# Tests never touch the network; a hub lookup fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_latte():
    from videosys import LatteConfig, LattePipeline

    return LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False))
