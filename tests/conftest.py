"""Test-wide set-up. Without CUDA, detkit's Triton kernels run under Triton's CPU interpreter, which must be
chosen before any kernel module is imported (triton.jit decides at decoration time), so it is set here, first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (the README's -n auto) the workers share the cores: each takes its part of them for the torch
# ops it runs itself, instead of every worker starting a thread per core.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _process_settings_restored():
    """A run inside the test process (detkit.edge.setup, a tool under runpy) sets process-wide settings from its
    config: the image pixel cap, the ops backend, torch's thread count. Each test gets them back as they were, so a
    test's config (say data.max_image_pixels=100) never reaches the next test on the same worker."""
    from detkit.data import image_io
    from detkit.ops import dispatch

    cap, backend, threads = image_io.max_image_pixels(), dispatch._configured, torch.get_num_threads()
    yield
    image_io.set_max_image_pixels(cap)
    dispatch._configured = backend
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
