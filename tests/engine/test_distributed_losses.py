"""Loss normalisation under data-parallel training: 2 gloo processes whose ranks hold unequal numbers of sampled
anchors / RoIs give, after DDP's gradient average, the gradient and the logged losses of one process holding the
whole batch (detkit.engine.distributed.global_mean_count). Tiny tensors, 1 thread per process."""
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detkit.engine import distributed
from detkit.modeling.proposals.rpn import rpn_losses
from detkit.modeling.roi_heads.fast_rcnn import fast_rcnn_losses

FEATURES, CLASSES = 6, 3  # CLASSES foreground classes + background


class TinyHeads(nn.Module):
    """Linear stand-ins for the RPN head and the box predictor, trained through the real loss functions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.objectness = nn.Linear(FEATURES, 1)
        self.rpn_deltas = nn.Linear(FEATURES, 4)
        self.cls_score = nn.Linear(FEATURES, CLASSES + 1)
        self.bbox_pred = nn.Linear(FEATURES, 4 * (CLASSES + 1))

    def forward(self, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """RPN losses over part's anchors, then Fast R-CNN losses over its RoIs."""
        anchors, rois = part["anchor_features"], part["roi_features"]
        losses = rpn_losses(self.objectness(anchors).squeeze(1), self.rpn_deltas(anchors), part["anchor_labels"],
                            part["anchor_targets"], part["sampled_pos"], part["sampled_neg"])
        losses.update(fast_rcnn_losses(self.cls_score(rois), self.bbox_pred(rois), part["roi_labels"],
                                       part["roi_targets"]))
        return losses


def _part(num_anchors: int, num_sampled: int, num_rois: int, seed: int) -> dict[str, torch.Tensor]:
    """One rank's share: num_sampled of num_anchors anchors sampled, num_rois sampled RoIs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (num_anchors,), generator=g).float()
    sampled = torch.zeros(num_anchors, dtype=torch.bool)
    sampled[:num_sampled] = True
    return {"anchor_features": torch.randn(num_anchors, FEATURES, generator=g), "anchor_labels": labels,
            "anchor_targets": torch.randn(num_anchors, 4, generator=g),
            "sampled_pos": sampled & (labels > 0), "sampled_neg": sampled & (labels == 0),
            "roi_features": torch.randn(num_rois, FEATURES, generator=g),
            "roi_labels": torch.randint(0, CLASSES + 1, (num_rois,), generator=g),
            "roi_targets": torch.randn(num_rois, 4, generator=g)}


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _alone(part: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Losses and gradients of one process (no process group) on `part`."""
    model = TinyHeads()
    losses = model(part)
    sum(losses.values()).backward()
    return {k: v.detach() for k, v in losses.items()}, _grads(model)


def _worker(rank: int, store: str, cases: list[list[dict[str, torch.Tensor]]], out: str) -> None:
    """One rank: DDP over TinyHeads on its part of each case; rank 0 saves the averaged gradients and logged losses."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        results = []
        for parts in cases:
            model = nn.parallel.DistributedDataParallel(TinyHeads())
            losses = model(parts[rank])
            sum(losses.values()).backward()
            logged = distributed.mean_over_ranks(torch.stack([v.detach() for v in losses.values()]))  # as Trainer
            results.append({"losses": dict(zip(losses, logged)), "grads": _grads(model.module)})
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


# (anchors, sampled anchors, sampled RoIs) on rank 0 and rank 1.
CASES = {"unequal": [(40, 30, 9), (12, 5, 2)], "one-rank-empty": [(40, 30, 9), (12, 0, 0)]}


def test_two_ranks_with_unequal_sample_counts_train_the_global_batch(tmp_path: Path) -> None:
    cases = [[_part(*c, seed=rank) for rank, c in enumerate(counts)] for counts in CASES.values()]
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(str(tmp_path / "store"), cases, str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    for name, parts, result in zip(CASES, cases, results):
        global_losses, global_grads = _alone(_concat(parts))
        # The per-rank means (what DDP averaged before the fix) are not the global mean for these counts.
        per_rank = [_alone(p)[1] for p in parts]
        assert max(float((sum(g[n] for g in per_rank) / 2 - global_grads[n]).abs().max())
                   for n in global_grads) > 1e-2, name
        for key, grad in global_grads.items():
            torch.testing.assert_close(result["grads"][key], grad, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
        for key, value in global_losses.items():
            torch.testing.assert_close(result["losses"][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def test_global_mean_count_alone_is_the_clamped_count() -> None:
    assert not distributed.is_initialized()
    count = torch.tensor(0)
    assert torch.equal(distributed.global_mean_count(count), torch.tensor(1))
    assert distributed.global_mean_count(torch.tensor(7)).dtype == torch.int64  # alone: the old divisor, unchanged


def test_fast_rcnn_losses_alone_are_bit_identical_to_cross_entropys_mean() -> None:
    torch.manual_seed(0)
    logits = torch.randn(37, CLASSES + 1, requires_grad=True)
    labels = torch.randint(0, CLASSES + 1, (37,))
    loss = fast_rcnn_losses(logits, torch.randn(37, 4 * (CLASSES + 1)), labels, torch.randn(37, 4))["loss_classifier"]
    reference = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.equal(loss, reference)
    assert torch.equal(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(reference, logits)[0])
