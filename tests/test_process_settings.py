"""The test process's settings do not leak from one test into the next (tests/conftest.py restores them). These two
run in file order on one worker (--dist loadfile): the first sets what an in-process run with an odd config would,
the second finds the defaults back. Before the fixture, a --check-data run with data.max_image_pixels=100 left its cap
in force and the next tests on that worker failed to decode their 64 px images (CI, 2 Dec)."""
import torch

from detkit.data import image_io
from detkit.ops import dispatch
from tests.conftest import BASELINE

_THREADS = BASELINE[2]


def test_a_run_in_this_process_sets_odd_values():
    image_io.set_max_image_pixels(100)
    dispatch.set_backend("torchvision")
    torch.set_num_threads(1 if _THREADS > 1 else 2)
    assert image_io.max_image_pixels() == 100


def test_the_next_test_finds_the_defaults_back():
    assert image_io.max_image_pixels() == image_io.DEFAULT_MAX_IMAGE_PIXELS
    assert dispatch._configured == "auto"
    assert torch.get_num_threads() == _THREADS
