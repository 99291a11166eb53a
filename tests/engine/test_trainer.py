"""Tests for detkit.engine.trainer on CPU with a tiny dataset and a dummy detector (torchvision's train contract)."""
import itertools
import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detkit.data.loader import build_train_loader
from detkit.engine.checkpoint import load_checkpoint
from detkit.engine.solver import build_lr_scheduler, build_optimizer
from detkit.engine.trainer import Trainer
from detkit.errors import DetkitError

MAX_ITER = 6
BATCH_SIZE = 2


class TinyBoxes(Dataset):
    """8 random 3x8x8 images with 3 boxes each; the last box of every image is marked `ignore`."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.images = torch.rand(8, 3, 8, 8, generator=g)
        self.boxes = torch.rand(8, 3, 4, generator=g) * 8
        self.labels = torch.randint(1, 3, (8, 3), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        target = {
            "boxes": self.boxes[i],
            "labels": self.labels[i],
            "ignore": torch.tensor([False, False, True]),
            "image_id": i,
        }
        return self.images[i], target

    def get(self, index: int, seed: int = 0):
        """The sample API detkit.data.loader uses."""
        return self[index]

    def aspect_ratios(self) -> list[float]:
        return [1.0] * len(self)


def loader_factory(start_iter: int):
    """An infinite stream whose k-th batch depends only on k (the detkit loader contract)."""
    # Like a DataLoader built without a generator, building the stream draws from the global RNG.
    torch.empty((), dtype=torch.int64).random_()
    dataset = TinyBoxes()
    per_epoch = len(dataset) // BATCH_SIZE

    def stream():
        epoch, skip = divmod(start_iter, per_epoch)
        while True:
            g = torch.Generator().manual_seed(epoch)
            loader = DataLoader(dataset, BATCH_SIZE, shuffle=True, generator=g, drop_last=True,
                                collate_fn=lambda batch: tuple(map(list, zip(*batch))))
            yield from itertools.islice(loader, skip, None)
            epoch, skip = epoch + 1, 0

    return stream()


def detkit_loader_factory(start_iter: int):
    """detkit's own training stream over the tiny dataset."""
    return build_train_loader(TinyBoxes(), BATCH_SIZE, num_workers=0, seed=0, start_iter=start_iter)


class TinyDetector(nn.Module):
    """Returns {loss_cls, loss_box_reg}; each loss samples boxes with torch.randperm and uses dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5))
        self.cls_score = nn.Linear(4, 3)
        self.bbox_pred = nn.Linear(4, 4)
        self.calls = 0
        self.seen_targets: list[dict] = []
        self.seen_training: list[bool] = []
        self.on_forward = None  # called with the forward count, to inject signals or NaNs

    def forward(self, images, targets):
        self.calls += 1
        self.seen_targets.extend(targets)
        self.seen_training.append(self.training)
        loss_cls = loss_box_reg = 0.0
        for image, target in zip(images, targets):
            feature = self.features(image).mean(dim=(1, 2))
            idx = torch.randperm(len(target["boxes"]))[:1]
            logits = self.cls_score(feature)[None].expand(len(idx), -1)
            deltas = self.bbox_pred(feature)[None].expand(len(idx), -1)
            loss_cls = loss_cls + F.cross_entropy(logits, target["labels"][idx])
            loss_box_reg = loss_box_reg + F.smooth_l1_loss(deltas, target["boxes"][idx] / 8)
        losses = {"loss_cls": loss_cls / len(images), "loss_box_reg": loss_box_reg / len(images)}
        if self.on_forward is not None:
            losses = self.on_forward(self.calls, losses) or losses
        return losses


def make_trainer(output_dir, *, max_iter=MAX_ITER, seed=0, factory=loader_factory, **kwargs):
    torch.manual_seed(seed)
    model = TinyDetector()
    optimizer = build_optimizer(model, base_lr=0.1, weight_decay=1e-3)
    scheduler = build_lr_scheduler(optimizer, max_iter=MAX_ITER, warmup_iters=2, policy="step", steps=(4,))
    options = {"checkpoint_period": 3, "log_period": 2, "progress": False, **kwargs}
    return Trainer(model, optimizer, scheduler, factory, max_iter=max_iter, output_dir=output_dir, **options)


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("factory", [loader_factory, detkit_loader_factory])
def test_resume_reaches_the_weights_of_an_uninterrupted_run(tmp_path, factory):
    straight = make_trainer(tmp_path / "straight", factory=factory)
    straight.train()
    first = make_trainer(tmp_path / "split", max_iter=3, factory=factory)
    first.train()
    assert load_checkpoint(tmp_path / "split" / "last.pth", restore_rng=False)["iteration"] == 3
    resumed = make_trainer(tmp_path / "split", seed=123, factory=factory)  # other initial weights and RNG: all must come from last.pth
    summary = resumed.train(resume=True)
    assert summary["iterations"] == MAX_ITER and resumed.model.calls == MAX_ITER - 3
    assert_same_parameters(straight.model, resumed.model)


def test_sigterm_saves_last_checkpoint_at_that_iteration_and_resume_matches(tmp_path):
    straight = make_trainer(tmp_path / "straight")
    straight.train()
    killed = make_trainer(tmp_path / "killed", checkpoint_period=100)
    killed.model.on_forward = lambda calls, losses: os.kill(os.getpid(), signal.SIGTERM) if calls == 2 else None
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        killed.train()
    assert exit_info.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is handler_before
    assert load_checkpoint(tmp_path / "killed" / "last.pth", restore_rng=False)["iteration"] == 2
    assert not (tmp_path / "killed" / "model_final.pth").exists()
    resumed = make_trainer(tmp_path / "killed", seed=5)
    resumed.train(resume=True)
    assert_same_parameters(straight.model, resumed.model)


def test_sigint_saves_last_checkpoint_then_raises_keyboard_interrupt(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_period=100)
    trainer.model.on_forward = lambda calls, losses: os.kill(os.getpid(), signal.SIGINT) if calls == 4 else None
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert load_checkpoint(tmp_path / "last.pth", restore_rng=False)["iteration"] == 4


def test_metrics_jsonl_has_losses_lr_throughput_and_eval_results(tmp_path):
    eval_calls = []

    def eval_fn(model):
        eval_calls.append(model.training)
        model.eval()
        torch.rand(3)  # evaluation that draws random numbers must not change the training run
        return {"bbox/AP": 0.25}

    trainer = make_trainer(tmp_path, log_period=2, eval_fn=eval_fn, eval_period=3)
    summary = trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "total_loss" in r]
    assert [r["iter"] for r in train_records] == [2, 4, 6]
    for record in train_records:
        assert {"loss_cls", "loss_box_reg", "total_loss", "lr", "img_per_s", "time"} <= record.keys()
        assert record["total_loss"] == pytest.approx(record["loss_cls"] + record["loss_box_reg"])
    assert train_records[0]["lr"] == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))  # iteration index 1, in warm-up
    assert [(r["iter"], r["bbox/AP"]) for r in records if "bbox/AP" in r] == [(3, 0.25), (6, 0.25)]
    assert len(eval_calls) == 2 and all(trainer.model.seen_training)  # back in train mode after each evaluation
    assert summary["iterations"] == MAX_ITER and summary["train/img_per_s"] > 0
    assert math.isfinite(summary["final_loss"]) and summary["bbox/AP"] == 0.25
    plain = make_trainer(tmp_path / "no_eval")
    plain.train()
    assert_same_parameters(plain.model, trainer.model)


def test_resume_keeps_metrics_up_to_the_checkpoint_without_duplicates(tmp_path):
    make_trainer(tmp_path, max_iter=4, log_period=1).train()  # logs 1..4, last.pth at 4
    (tmp_path / "last.pth").unlink()
    make_trainer(tmp_path, max_iter=3, log_period=1).train()  # a fresh run starts metrics.jsonl anew: 1..3
    make_trainer(tmp_path, log_period=1).train(resume=True)  # continues from 3
    iters = [json.loads(line)["iter"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert iters == [1, 2, 3, 4, 5, 6]


def test_model_final_holds_the_trained_state_dict(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["meta"] == {}  # no config, no class list; a training run's holds its class names and ids
    state = saved["model"]
    fresh = TinyDetector()
    fresh.load_state_dict(state)
    assert_same_parameters(trainer.model, fresh)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_ignored_boxes_are_dropped_before_the_model(tmp_path):
    trainer = make_trainer(tmp_path, max_iter=2)
    trainer.train()
    assert len(trainer.model.seen_targets) == 2 * BATCH_SIZE
    for target in trainer.model.seen_targets:
        assert "ignore" not in target
        assert len(target["boxes"]) == len(target["labels"]) == 2


def test_nan_loss_raises_naming_the_iteration_and_the_loss(tmp_path):
    trainer = make_trainer(tmp_path)

    def poison(calls, losses):
        if calls == 3:
            return {**losses, "loss_box_reg": losses["loss_box_reg"] * float("nan")}

    trainer.model.on_forward = poison
    with pytest.raises(FloatingPointError, match=r"loss_box_reg.*iteration 3"):
        trainer.train()


def test_gradient_clipping_bounds_the_gradient_norm(tmp_path):
    trainer = make_trainer(tmp_path, max_iter=2, grad_clip=1e-3)
    trainer.train()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-3 + 1e-7


def test_resume_without_checkpoint_starts_from_scratch_and_finished_run_skips(tmp_path, caplog):
    with caplog.at_level("INFO", logger="detkit.engine.trainer"):
        first = make_trainer(tmp_path, max_iter=4)
        assert first.train(resume=True)["iterations"] == 4
    assert "training from scratch" in caplog.text
    again = make_trainer(tmp_path, max_iter=4)
    summary = again.train(resume=True)
    assert again.model.calls == 0 and summary["iterations"] == 4
    assert_same_parameters(first.model, again.model)


def test_cpu_amp_is_bf16_where_supported_and_unknown_modes_are_rejected(tmp_path, monkeypatch):
    assert make_trainer(tmp_path, amp="fp16").amp == "off"  # loss-scaled fp16 is CUDA only
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert make_trainer(tmp_path, amp="bf16").amp == ("bf16" if native else "off")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert make_trainer(tmp_path, amp="bf16").amp == "off"
    with pytest.raises(DetkitError, match="amp"):
        make_trainer(tmp_path, amp="fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda_trains_checkpoints_the_scaler_and_resumes(tmp_path, amp):
    trainer = make_trainer(tmp_path, max_iter=3, device="cuda", amp=amp)
    assert trainer.amp == amp and math.isfinite(trainer.train()["final_loss"])
    state = load_checkpoint(tmp_path / "last.pth", restore_rng=False)
    assert (state["scaler"] is not None) == (amp == "fp16")
    resumed = make_trainer(tmp_path, device="cuda", amp=amp)
    assert resumed.train(resume=True)["iterations"] == MAX_ITER and resumed.model.calls == MAX_ITER - 3
