"""Loader workers forked after an in-process selective search start (OpenCV's thread pool does not survive fork).

Found by `tools/train.py configs/fast_rcnn_r18_fpn.yaml` on a fresh machine: proposals were computed in the
training process, then the forked DataLoader workers hung in `cv2.setNumThreads`. Run in a fresh process, with a
timeout, since the state is process-wide and a hang must fail the test rather than the suite.
"""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import numpy as np, torch
from torch.utils.data import DataLoader
from detkit.data.loader import _worker_init
from detkit.data.proposals import ProposalStore, propose_dataset
from detkit.data.voc import VOCDataset
ds = VOCDataset({root!r}, "train")
propose_dataset(ds, ProposalStore({store!r}), workers=1, progress=False)
loader = DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=_worker_init, collate_fn=lambda b: b, timeout=30)
print(sum(len(batch) for batch in loader))
"""


def test_forked_loader_workers_start_after_an_in_process_search(tmp_path):
    import numpy as np

    from tests.data.conftest import write_voc

    rng = np.random.default_rng(0)
    samples = {f"im{i}": (rng.integers(0, 255, (192, 192, 3), dtype=np.uint8), [("cell", (3, 5, 60, 70), 0)])
               for i in range(16)}
    root = write_voc(tmp_path / "voc", samples)
    code = SCRIPT.format(root=str(root), store=str(tmp_path / "store"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "16"
