import os

import pytest
import torch

# Small, reproducible runs on a 2-core machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_clip():
    from mugstan.backbones.clip import build_clip

    torch.manual_seed(0)
    return build_clip("mugstan-tiny")
