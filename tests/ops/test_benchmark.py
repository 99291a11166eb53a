"""The ops benchmark: its cases run and agree (tiny shapes, interpreter); the CLI fails in one line without CUDA."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detkit.ops.benchmark import agreement, build_cases, format_row

TOOL = Path(__file__).resolve().parents[2] / "tools" / "benchmark.py"


@pytest.mark.slow
@pytest.mark.usefixtures("triton_cpu")
def test_every_case_runs_both_sides_and_they_agree():
    cases = build_cases(torch.device("cpu"), tiny=True)
    # 2 sizes x (NMS, batched NMS by class blocks and by class offset); 2 shapes x (RoIAlign fwd and fwd+bwd in
    # NCHW and NHWC, RoIPool fwd); the multi-level pooler
    assert len(cases) == 17
    for case in cases:
        ours, reference = case.setup()
        verdict = agreement(ours(), reference())
        assert verdict == "same" or float(verdict) < 1e-5, f"{case.name}: {verdict}"


def test_row_reports_speedup_as_torchvision_over_detkit():
    row = format_row({"case": "nms_1000", "detkit_ms": 0.5, "torchvision_ms": 2.0, "agreement": "same"})
    assert row == "| nms_1000 | 0.500 | 2.000 | 4.00x | same |"
    assert agreement(torch.tensor([1, 2]), torch.tensor([2, 1])) == "DIFFERENT"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cli_without_cuda_prints_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(TOOL), "ops"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "needs a CUDA device" in done.stderr
