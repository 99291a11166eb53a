"""Under torchrun, after one rank's one-line error the other ranks exit quietly: no raw gloo traceback
(issue #21 item 5). torchrun's own ChildFailedError summary comes from the launcher and stays."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = '''
import argparse
from detkit.cli import add_common_args, run
from detkit.errors import DetkitError

def main(args):
    import torch.distributed as dist
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise DetkitError("image 7 of the training set is corrupt")
    dist.barrier()  # rank 0 waits for rank 1, which is gone

parser = argparse.ArgumentParser(prog="tool.py")
add_common_args(parser)
run(main, parser)
'''


def test_other_ranks_exit_quietly_after_one_ranks_error(tmp_path):
    (tmp_path / "tool.py").write_text(TOOL)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "tool.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert output.count("tool.py: error: image 7 of the training set is corrupt") == 1
    assert "[rank0]" not in output and "Connection closed by peer" not in output, output[-3000:]
