"""The GPU tier: every test here is marked `gpu` and skipped, with the reason, where torch sees no CUDA GPU.

Run with `python -m pytest -m gpu` (or `svdpipe gpu-check`, which also records each test's figures). Never
required by CI: CI has no GPU and sees these tests skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

NO_CUDA = "needs a CUDA GPU: torch.cuda.is_available() is False (CPU build or no device)"

# Frames vs diffusers on the same GPU, max abs difference in [0, 1] pixel units. PROVISIONAL until measured:
# set from the figures `svdpipe gpu-check` records (record_property "max_abs_diff") on a real GPU.
TOLERANCE = {"fp32": 1e-5, "fp16": 2e-2, "bf16": 5e-2}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gpu/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


@pytest.fixture(scope="session")
def gpu_image():
    import PIL.Image

    rng = np.random.default_rng(1234)
    return PIL.Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def gpu_ray():
    """A local Ray that sees this machine's GPUs (the CPU tier's shared Ray has none)."""
    import ray

    from svdpipe.engine.sync import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()
