"""Backend choice: DETKIT_OPS over set_backend, clear errors, no triton import on the CPU auto path."""
import os
import subprocess
import sys

import pytest
import torch

from detkit.errors import DetkitError
from detkit.ops import dispatch, get_backend, nms, set_backend


@pytest.fixture(autouse=True)
def restore_backend(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DETKIT_OPS", raising=False)
    yield
    set_backend("auto")


def test_env_var_wins_over_config(monkeypatch):
    set_backend("triton")
    assert get_backend() == "triton"
    monkeypatch.setenv("DETKIT_OPS", "torchvision")
    assert get_backend() == "torchvision"


def test_unknown_names_raise_naming_the_source(monkeypatch):
    with pytest.raises(DetkitError, match="ops.backend"):
        set_backend("cuda")
    monkeypatch.setenv("DETKIT_OPS", "fast")
    with pytest.raises(DetkitError, match="DETKIT_OPS"):
        get_backend()


def test_auto_uses_torchvision_for_cpu_tensors():
    assert dispatch.use_triton("nms", torch.zeros(1)) is False


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DETKIT_OPS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DetkitError, match="TRITON_INTERPRET=1"):
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


def test_cpu_auto_path_needs_no_triton():
    # torchvision's own import pulls triton in through torch._dynamo when it is installed, so the child
    # process makes triton unimportable and checks detkit neither needs it nor loads its kernels.
    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "import torch\n"
        "from detkit.ops import nms, batched_nms, roi_align, roi_pool, multi_level_roi_align\n"
        "b = torch.tensor([[0., 0., 4., 4.], [1., 1., 5., 5.]]); s = torch.tensor([.9, .8])\n"
        "nms(b, s, .5); batched_nms(b, s, torch.tensor([0, 1]), .5)\n"
        "f = torch.randn(1, 2, 6, 6); r = torch.tensor([[0., 0., 0., 3., 3.]])\n"
        "roi_align(f, r, 2); roi_pool(f, r, 2)\n"
        "multi_level_roi_align([f], r, torch.zeros(1, dtype=torch.long), 2, [1.], 2, True)\n"
        "assert 'detkit.ops.kernels' not in sys.modules, 'kernels were imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DETKIT_OPS", "TRITON_INTERPRET")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
