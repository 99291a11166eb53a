"""tools/propose.py from many processes (issue 25 item 3): torchrun ranks share the images of a split and give the
store one process gives (byte-equal files, the same recall); two runs filling one folder at once (standing in for
two machines) leave a complete, valid store; a killed rank and a rerun complete the store.

CPU, gloo, twelve 64x48 images."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data.conftest import noisy_rectangles, write_voc

REPO = Path(__file__).resolve().parents[1]
NUM_IMAGES = 12


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """A VOC test split of twelve noisy 64x48 images with two rectangles each."""
    samples = noisy_rectangles(NUM_IMAGES, 48, 64, (("cell", None),) * 2, sides=(8, 24), corners=(40, 25))
    return write_voc(tmp_path_factory.mktemp("voc") / "voc", samples, splits=("test",))


@pytest.fixture(scope="module")
def reference(voc, tmp_path_factory) -> Path:
    """The store one process (this one, one worker) fills."""
    from detkit.data.proposals import propose_dataset
    from detkit.data.voc import VOCDataset

    store = tmp_path_factory.mktemp("ref") / "store"
    propose_dataset(VOCDataset(voc, "test"), store, workers=1, progress=False)
    return store


def config(voc: Path, store: Path) -> Path:
    path = store.with_name(f"{store.name}.yaml")
    path.write_text(f"data:\n  root: {voc}\n  test: {{format: voc, split: test, proposals: {store}}}\n")
    return path


def propose(cfg: Path, *args: str, nproc: int = 0) -> subprocess.Popen:
    """propose.py alone (nproc 0) or under torchrun with nproc processes (one thread each)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable] if not nproc else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 f"--nproc-per-node={nproc}"]
    return subprocess.Popen([*launch, str(REPO / "tools" / "propose.py"), str(cfg), "--split", "test", "--no-progress",
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def assert_same_store(store: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in store.iterdir()) == names  # no temporary or lock file left
    for name in names:
        if name != "meta.json":  # meta.json names no path, but compare it as data all the same
            assert (store / name).read_bytes() == (reference / name).read_bytes(), name
    assert (store / "meta.json").read_text() == (reference / "meta.json").read_text()


def test_two_ranks_give_the_store_and_recall_of_one_process(voc, reference, tmp_path):
    store = tmp_path / "store"
    out, err = finish(propose(config(voc, store), "--workers", "999", nproc=2))
    assert_same_store(store, reference)
    assert out.count("ground-truth boxes)") == 1  # the recall table is printed once, by rank 0
    # --workers is per rank, capped at the cores each of the two ranks of this machine has
    assert "proposals.workers=999 but this process has" in err and "(2 ranks on this machine)" in err


def test_two_runs_filling_one_folder_at_once_leave_a_complete_valid_store(voc, reference, tmp_path):
    store = tmp_path / "store"
    cfg = config(voc, store)
    runs = [propose(cfg, "--workers", "1"), propose(cfg, "--workers", "1")]  # two machines sharing one folder
    for proc in runs:
        out, _ = finish(proc)
        assert "AR@100" in out
    assert_same_store(store, reference)


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) == pid:
            found.append(int(status.parent.name))
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    todo = _children(launcher)
    while todo:
        pid = todo.pop()
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and any(e.startswith(b"LOCAL_RANK=") for e in environ):
            return pid
        todo += _children(pid)
    return None


def test_a_killed_rank_and_a_rerun_complete_the_store(voc, reference, tmp_path):
    store = tmp_path / "store"
    cfg = config(voc, store)
    proc = propose(cfg, "--workers", "1", nproc=2)
    deadline = time.monotonic() + 240
    while proc.poll() is None and not list(store.glob("*.npy")) and time.monotonic() < deadline:
        time.sleep(0.01)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None and len(list(store.glob("*.npy"))) < NUM_IMAGES
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=240)
    assert proc.returncode != 0 and not (store / "recall.json").exists()
    assert len(list(store.glob("*.npy"))) < NUM_IMAGES
    finish(propose(cfg, "--workers", "1"))  # the rerun, here with one process
    assert_same_store(store, reference)


def test_a_store_without_meta_json_is_refused_until_rebuild(voc, reference, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    for name in ("1.npy", "2.npy"):
        (store / name).write_bytes((reference / name).read_bytes())
    cfg = config(voc, store)
    proc = propose(cfg)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"propose.py: error: proposal store {store} holds 2 proposal files but no meta.json")
    assert sorted(p.name for p in store.iterdir()) == ["1.npy", "2.npy"]  # nothing written, nothing deleted
    out, _ = finish(propose(cfg, "--rebuild"))
    assert f"--rebuild: 2 file(s) of {store} deleted" in out
    assert_same_store(store, reference)
