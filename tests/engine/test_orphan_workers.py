"""After SIGKILL a dead run's loader workers neither keep its .lock nor live on (issue #21 item 5)."""
import multiprocessing
import os
import signal
import sys
import time

import pytest
import torch

from detkit.data.loader import build_test_loader
from detkit.engine.run_dir import lock_output_dir, prepare_output_dir, release_output_dir


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        time.sleep(0.01 if i == 0 else 60)  # then a slow image: a busy worker never reaches torch's parent check
        return torch.zeros(3, 4, 4), {"image_id": i}


def holder(folder, pids):
    """A run that holds its folder's lock and has forked a child (as a loader, a pool), until it is killed."""
    prepare_output_dir(folder, resume=False, overwrite=False)
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    pids.put([child])
    time.sleep(600)


def trainer(folder, pids):
    """A run that holds its folder's lock and iterates a loader with 2 workers, until it is killed."""
    prepare_output_dir(folder, resume=False, overwrite=False)
    loader = iter(build_test_loader(Slow(), num_workers=2))
    next(loader)
    pids.put([w.pid for w in loader._workers])
    time.sleep(600)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie (exited, not yet reaped) counts as gone
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def killed(target, folder, count):
    """Start `target` in a forked process, take the pids of its `count` children, SIGKILL it; the children's pids."""
    context = multiprocessing.get_context("fork")  # starts at once: torch is already imported
    pids = context.Queue()
    run = context.Process(target=target, args=(folder, pids))
    run.start()
    try:
        children = pids.get(timeout=60)
        assert len(children) == count and all(alive(pid) for pid in children)
    finally:
        os.kill(run.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while run.is_alive() and time.monotonic() < deadline:  # waitpid: join() would wait on a pipe orphans hold
            time.sleep(0.01)
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_dead_runs_orphans_do_not_hold_its_lock(tmp_path):
    (orphan,) = killed(holder, tmp_path, 1)
    try:
        assert alive(orphan)
        # Resuming at once is not refused with "another process is training (it holds .lock)".
        lock_output_dir(tmp_path)
        release_output_dir(tmp_path)
    finally:
        os.kill(orphan, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_loader_workers_exit_when_their_run_is_sigkilled(tmp_path):
    workers = killed(trainer, tmp_path, 2)
    try:
        deadline = time.monotonic() + 3  # each is inside a 60 s __getitem__
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers)
        lock_output_dir(tmp_path)
        release_output_dir(tmp_path)
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
