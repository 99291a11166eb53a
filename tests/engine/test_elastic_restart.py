"""torchrun --max-restarts: the restarted group forms even when a rank reads the agent's store before its peer has
written its new address (torchrun keeps one store for all restarts, with the old group's keys in it)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Restart 0: the group forms, then rank 1 dies (SIGKILL) and rank 0's next collective fails. Restart 1: rank 1 joins
# 3 s after rank 0, so rank 0 reads rank 1's key first: the dead process's address unless the keys are per restart.
TOOL = '''
import os, signal, time
import torch
import torch.distributed as dist
from detkit.engine import distributed

restart, rank = distributed.restart_count(), int(os.environ["RANK"])
if restart == 1 and rank == 1:
    time.sleep(3)
distributed.init_from_env(torch.device("cpu"))
total = torch.ones(1)
dist.all_reduce(total)
if restart == 0:
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(total)
print(f"restart {restart} rank {rank}: sum {total.item()}", flush=True)
'''


def test_a_restarted_group_forms_when_one_rank_comes_late(tmp_path):
    (tmp_path / "tool.py").write_text(TOOL)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # Two launches at most: once in two full-suite runs on a 2-core CPU (2 Dec) the restarted rank 1 aborted
    # ("terminate called without an active exception", exit -6) after the killed group's teardown, a failure this
    # test does not target (the stale-address one failed 2 of 3 launches before the per-restart prefix).
    for attempt in range(2):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "--max-restarts=1", str(tmp_path / "tool.py")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, output[-3000:]
    assert "restart 1 rank 0: sum 2.0" in output and "restart 1 rank 1: sum 2.0" in output
