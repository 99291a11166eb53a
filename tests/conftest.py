"""Test-wide set-up. Without CUDA, detkit's Triton kernels run under Triton's CPU interpreter, which must be
chosen before any kernel module is imported (triton.jit decides at decoration time), so it is set here, first."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (the README's -n auto) the workers share the cores: each takes its part of them for the torch
# ops it runs itself, instead of every worker starting a thread per core.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


# detkit is imported only here, after TRITON_INTERPRET is chosen.
from detkit.data import image_io  # noqa: E402
from detkit.ops import dispatch  # noqa: E402

# The process-wide settings as a test starts: the defaults, and the worker's share of the threads.
BASELINE = (image_io.max_image_pixels(), dispatch._configured, torch.get_num_threads())


def _restore(cap: int | None, backend: str, threads: int) -> None:
    image_io.set_max_image_pixels(cap)
    dispatch._configured = backend
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _process_settings_restored():
    """A run inside the test process (detkit.edge.setup, a tool under runpy, a module-scoped fixture that trains)
    sets process-wide settings from its config: the image pixel cap, the ops backend, torch's thread count. Every
    test starts and ends with BASELINE, so a config's data.max_image_pixels=100 never reaches the next test."""
    _restore(*BASELINE)
    yield
    _restore(*BASELINE)

