import os

# Idle OpenMP threads sleep instead of spinning: with two cores shared by the test process, its
# DataLoader workers and torchrun children, spinning threads make torch 10-40x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Small, reproducible runs on a 2-core machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_clip():
    from mugstan.backbones.build import build_clip

    torch.manual_seed(0)
    return build_clip("mugstan-tiny")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA GPU is present (benchmarks/gpu_check.sh)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
