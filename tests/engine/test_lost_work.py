"""The trainer never loses completed iterations: an error saves them first, a diverged run keeps the last good
checkpoint, stale temporary files go, and a resumed run uses the optimizer settings it was built with."""
import json
import math

import pytest
import torch
from torch import nn

from detkit.engine.checkpoint import load_checkpoint
from detkit.engine.solver import build_lr_scheduler, build_optimizer
from detkit.engine.trainer import Trainer
from detkit.errors import DetkitError

from .test_trainer import MAX_ITER, assert_same_parameters, loader_factory, make_trainer


def failing_factory(fail_at_batch: int):
    """loader_factory whose stream raises a data error when batch `fail_at_batch` (1-based, global) is fetched."""

    def factory(start_iter: int):
        stream = loader_factory(start_iter)

        def batches():
            for index, batch in enumerate(stream, start=start_iter + 1):
                if index == fail_at_batch:
                    raise DetkitError("Image file bad.jpg is corrupt or not an image cv2 can decode.")
                yield batch

        return batches()

    return factory


def test_a_data_error_mid_run_saves_the_last_completed_iteration_and_resumes_exactly(tmp_path):
    straight = make_trainer(tmp_path / "straight")
    straight.train()
    broken = make_trainer(tmp_path / "broken", checkpoint_period=100, factory=failing_factory(5))
    with pytest.raises(DetkitError, match="bad.jpg"):
        broken.train()
    assert load_checkpoint(tmp_path / "broken" / "last.pth", restore_rng=False)["iteration"] == 4
    assert not (tmp_path / "broken" / "model_final.pth").exists()
    resumed = make_trainer(tmp_path / "broken", seed=9)
    resumed.train(resume=True)
    assert resumed.model.calls == MAX_ITER - 4
    assert_same_parameters(straight.model, resumed.model)


def test_an_error_inside_the_forward_saves_the_state_before_it(tmp_path):
    straight = make_trainer(tmp_path / "straight")
    straight.train()
    broken = make_trainer(tmp_path / "broken", checkpoint_period=100)

    def explode(calls, losses):
        if calls == 3:
            torch.rand(5)  # the failing iteration drew random numbers: the saved RNG state must not include them
            raise RuntimeError("a bad target shape")

    broken.model.on_forward = explode
    with pytest.raises(RuntimeError, match="bad target"):
        broken.train()
    assert load_checkpoint(tmp_path / "broken" / "last.pth", restore_rng=False)["iteration"] == 2
    resumed = make_trainer(tmp_path / "broken", seed=3)
    resumed.train(resume=True)
    assert_same_parameters(straight.model, resumed.model)


class Exploding(nn.Module):
    """loss = w^2 under SGD with lr 1e10: w goes 1 -> -2e10 -> 4e20, and the loss at iteration 3 overflows."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss": (self.w ** 2).sum()}


def exploding_trainer(output_dir, max_iter=5):
    model = Exploding()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    return Trainer(model, optimizer, scheduler, loader_factory, max_iter=max_iter, output_dir=output_dir,
                   checkpoint_period=1, log_period=1, progress=False)


def test_a_diverged_run_keeps_the_last_checkpoint_whose_next_loss_was_finite(tmp_path):
    with pytest.raises(FloatingPointError, match=r"iteration 3.*last.pth holds iteration 1; --resume continues"):
        exploding_trainer(tmp_path).train()
    kept = load_checkpoint(tmp_path / "last.pth", restore_rng=False)
    assert kept["iteration"] == 1 and kept["model"]["w"].item() == pytest.approx(-2e10, rel=1e-6)
    aside = load_checkpoint(tmp_path / "last.diverged.pth", restore_rng=False)
    assert aside["iteration"] == 2 and aside["model"]["w"].item() == pytest.approx(4e20, rel=1e-6)
    assert not (tmp_path / "last.prev.pth").exists()


def test_a_run_that_diverges_before_any_proven_checkpoint_leaves_none_to_resume(tmp_path):
    model = Exploding()
    with torch.no_grad():
        model.w.fill_(1e15)  # the loss at iteration 2 already overflows
    optimizer = torch.optim.SGD(model.parameters(), lr=1e10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    trainer = Trainer(model, optimizer, scheduler, loader_factory, max_iter=5, output_dir=tmp_path,
                      checkpoint_period=1, log_period=1, progress=False)
    with pytest.raises(FloatingPointError, match="would start from scratch"):
        trainer.train()
    assert not (tmp_path / "last.pth").exists() and (tmp_path / "last.diverged.pth").exists()


def test_a_finished_run_leaves_only_last_pth(tmp_path):
    make_trainer(tmp_path, checkpoint_period=1).train()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".lock", "last.pth", "metrics.jsonl", "model_final.pth"]


def test_stale_temporary_files_of_the_run_are_removed_at_the_next_start(tmp_path):
    make_trainer(tmp_path, max_iter=3).train()
    debris = [tmp_path / ".last.pth.k2j4_x1.tmp", tmp_path / ".model_final.pth.abc123.tmp",
              tmp_path / "metrics.json.tmp", tmp_path / ".last.prev.pth.77.tmp"]
    for path in debris:
        path.write_bytes(b"\0" * 1024)  # what kill -9 inside a save leaves behind
    keep = [tmp_path / "notes.tmp", tmp_path / ".my.pth.tmp"]
    for path in keep:
        path.write_text("the user's")
    make_trainer(tmp_path).train(resume=True)
    assert not [p for p in debris if p.exists()]
    assert all(p.read_text() == "the user's" for p in keep)
    assert load_checkpoint(tmp_path / "last.pth", restore_rng=False)["iteration"] == MAX_ITER


def test_resume_uses_the_configured_base_lr_not_the_checkpoints(tmp_path):
    make_trainer(tmp_path / "run", max_iter=3, log_period=1).train()

    def build(base_lr, output_dir):
        torch.manual_seed(0)
        from .test_trainer import TinyDetector

        model = TinyDetector()
        optimizer = build_optimizer(model, base_lr=base_lr, weight_decay=1e-3, momentum=0.5)
        scheduler = build_lr_scheduler(optimizer, max_iter=MAX_ITER, warmup_iters=2, policy="step", steps=(4,))
        return Trainer(model, optimizer, scheduler, loader_factory, max_iter=MAX_ITER, output_dir=output_dir,
                       checkpoint_period=3, log_period=1, progress=False)

    build(0.02, tmp_path / "run").train(resume=True)
    reference = build(0.02, tmp_path / "reference")  # the schedule a run built with 0.02 follows
    reference.train()
    lrs = {json.loads(line)["iter"]: json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").open()}
    expected = {json.loads(line)["iter"]: json.loads(line)["lr"]
                for line in (tmp_path / "reference" / "metrics.jsonl").open()}
    assert lrs[3] == pytest.approx(0.1)  # before the resume: the first run's base_lr 0.1, warm-up done
    for iteration in (4, 5, 6):
        assert lrs[iteration] == pytest.approx(expected[iteration])
    assert lrs[5] == pytest.approx(0.02 * 0.1)  # after the step at iteration 4
    state = load_checkpoint(tmp_path / "run" / "last.pth", restore_rng=False)
    group = state["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 0.02 and group["momentum"] == 0.5 and math.isclose(group["lr"], 0.002)
