"""Faster R-CNN's training schedules (Ren et al. 2015 §3.2) as lists of stages (detkit.engine.stages).

``train.schedule``:
    joint         approximate joint training: one Trainer run in output_dir itself (detkit.recipes.joint),
                  proposals detached
    exact_joint   the same run; build_model gives an RPN whose proposals are not detached, so the RoI heads' loss
                  reaches the RPN's box regression through RoIAlign's box gradient (detkit.modeling.proposals.rpn)
    alternating   the paper's 4 steps, as stages in <output_dir>/<name>/ (a finished one is skipped on --resume,
                  a stopped one resumes inside its folder from its last.pth):

    1_rpn          an RPN-only network: a Faster R-CNN whose RoI heads are frozen and skipped; backbone from
                   model.backbone.weights or from scratch
    1_proposals    the step-1 RPN's proposals for every training image, in a proposal store (proposals.method rpn)
    2_fast_rcnn    Fast R-CNN with a backbone of its own, on those stored proposals: initialised afresh (from
                   model.backbone.weights, as in the paper) or, from scratch, a copy of step 1's trained backbone
                   (train.alternating.step2_backbone)
    3_rpn          the step-2 backbone and RoI heads with a new RPN; backbone frozen, only the RPN's layers train
    4_fast_rcnn    backbone and RPN frozen, only the RoI heads train, on the step-3 RPN's proposals

Step 2 reads a store because its backbone is not step 1's: proposals in memory would need a second backbone
forward per iteration, the store needs one per training image (and is resumable image by image). Step 4 proposes
in memory: its RPN is part of the network being trained, frozen, so the network's own forward yields the step-3
RPN's proposals at no extra cost (in eval mode, as step 2's store was filled), on the augmented image itself.
Step 3's RPN layers start fresh, as in the reference code (py-faster-rcnn, train_faster_rcnn_alt_opt.py: the
stage-2 RPN is initialised from the stage-1 Fast R-CNN model, which has no RPN layers).
Each step runs the solver's schedule scaled to its length: its warmup is the same fraction of the step as
solver.warmup_iters is of solver.max_iter, as its learning-rate steps are (solver.steps are fractions).
The result is one network with one backbone: 4_fast_rcnn/model_final.pth, copied to <output_dir>/model_final.pth.

Under torchrun every rank runs every step (detkit.engine.stages.run_stages): a training step is one DDP run (each
rank its slice of the same global batches, losses over the global batch, rank 0 writing), 1_proposals shares the
store's missing images among the ranks (detkit.data.proposals.propose_dataset), and what follows a step reads only
what the step's barrier has seen written. Rank 0 alone clears old steps (--overwrite) and links the final weights.
"""
from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.config import Config
from detkit.data.proposals import ProposalStore, propose_dataset
from detkit.engine.checkpoint import load_model_weights
from detkit.engine.distributed import barrier, is_main_process
from detkit.engine.run_dir import StageReads, link_or_copy
from detkit.engine.stages import Stage, run_stages
from detkit.errors import DetkitError
from detkit.modeling.build import build_model
from detkit.modeling.detectors.two_stage import TwoStageDetector
from detkit.recipes import common

ALTERNATING_STEPS = ("1_rpn", "1_proposals", "2_fast_rcnn", "3_rpn", "4_fast_rcnn")
FINAL = "model_final.pth"


def _step_reads(i: int, name: str, after: tuple[str, ...], *extra: str) -> StageReads:
    return StageReads(name, (*common.TRAINER_READS, f"train.alternating.iter_fractions[{i}]",
                             f"train.alternating.lr_factors[{i}]", *extra), common.TRAINER_SKIPS + common.TEST_TIME,
                      after=after)


# The keys each step reads, for the resume check (detkit.engine.run_dir.check_resume): a step reads its own element
# of iter_fractions and lr_factors; the store of 1_proposals, half filled with other settings, cannot continue.
STAGE_READS = (
    _step_reads(0, "1_rpn", ()),
    StageReads("1_proposals", ("data", "input", "model", "proposals.min_size", "proposals.top_k"),
               common.TRAINER_SKIPS + common.TEST_TIME, continues=False, after=("1_rpn",)),
    _step_reads(1, "2_fast_rcnn", ("1_rpn", "1_proposals"), "train.alternating.step2_backbone"),
    _step_reads(2, "3_rpn", ("2_fast_rcnn",)),
    _step_reads(3, "4_fast_rcnn", ("3_rpn",)),
)


def step_iterations(cfg: Config) -> list[int]:
    """Iterations of the 4 alternating steps: train.alternating.iter_fractions of solver.max_iter, rounded with
    Python's round (halves to even: 0.15 x 350 = 52.5 gives 52), at least 1."""
    return [max(1, round(f * cfg.solver.max_iter)) for f in cfg.train.alternating.iter_fractions]


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch, so a stage starts the same whether earlier stages ran now or were skipped."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_warmup(cfg: Config, max_iter: int) -> int:
    """A step's warmup iterations: solver.warmup_iters scaled by the step's share of solver.max_iter, rounded as
    step_iterations rounds (Python's round: halves to even)."""
    return round(cfg.solver.warmup_iters * max_iter / cfg.solver.max_iter)


def fit(cfg: Config, model: nn.Module, train_set: Any, device: torch.device, folder: Path, resume: bool, *,
        max_iter: int, base_lr: float, progress: bool) -> dict[str, Any]:
    """One ordinary Trainer run of the model's trainable parameters in folder, with the config's solver scaled to
    max_iter iterations (step_warmup)."""
    trainer = common.make_trainer(cfg, model, train_set, device, folder, max_iter=max_iter, base_lr=base_lr,
                           warmup_iters=step_warmup(cfg, max_iter), progress=progress)
    return trainer.train(resume=resume)


def step2_starts_from_step1(cfg: Config) -> bool:
    """Whether step 2's backbone is a copy of step 1's (train.alternating.step2_backbone; auto: when the backbone
    has no pretrained weights)."""
    choice = cfg.train.alternating.step2_backbone
    return choice == "step1" or (choice == "auto" and not (cfg.model.backbone.weights or cfg.model.weights))


def load_parts(model: nn.Module, weights: Path, missing_prefix: str) -> None:
    """Loads weights whose only absent keys are the model's ``missing_prefix`` part (e.g. a Fast R-CNN into a
    Faster R-CNN, whose RPN stays as initialised)."""
    result = load_model_weights(weights, model, strict=False)
    wrong = [k for k in result["missing"] if not k.startswith(missing_prefix)] + result["unexpected"]
    if wrong:
        raise DetkitError(f"{weights}: keys other than {missing_prefix}* do not match the model: {wrong[:5]}")


def alternating_stages(cfg: Config, train_set: Any, device: torch.device, *, progress: bool = True
                       ) -> list[Stage]:
    """The stages of 4-step alternating training (module docstring); train_set carries the run's class list."""
    out = Path(cfg.output_dir)
    num_classes = len(cfg.model.class_names)
    iters = step_iterations(cfg)
    lrs = [f * cfg.solver.base_lr for f in cfg.train.alternating.lr_factors]
    store = out / "1_proposals" / "train"

    def faster_rcnn(seed: int, init_weights: bool = False) -> TwoStageDetector:
        # The starting weights (model.weights, model.backbone.weights) are loaded, and fetched, only where a step
        # keeps some of them: a step that loads an earlier step's file or its own last.pth over them needs none,
        # so a resumed run works offline with an empty torch.hub cache. The random initialisation is the same
        # either way (loading a file draws no random numbers).
        seed_everything(seed)
        return build_model(cfg, num_classes, init_weights=init_weights)

    def resumes(folder: Path, resume: bool) -> bool:
        return resume and (folder / "last.pth").is_file()

    def step1(folder: Path, resume: bool) -> dict[str, Any]:
        model = faster_rcnn(cfg.seed + 1, init_weights=not resumes(folder, resume)).freeze("roi_heads")
        return fit(cfg, model, train_set, device, folder, resume, max_iter=iters[0], base_lr=lrs[0],
                   progress=progress)

    def proposals(folder: Path, resume: bool) -> dict[str, Any]:
        model = faster_rcnn(cfg.seed + 1)
        load_model_weights(out / "1_rpn" / FINAL, model)
        p = cfg.proposals
        recall = propose_dataset(train_set, ProposalStore(store), method="rpn", rpn_model=model,
                                 rpn_weights=out / "1_rpn" / FINAL, min_size=p.min_size, top_k=p.top_k,
                                 device=device, progress=progress)
        return dict(recall or {})

    def step2(folder: Path, resume: bool) -> dict[str, Any]:
        fast = copy.deepcopy(cfg)
        fast.model.arch, fast.train.schedule = "fast_rcnn", "joint"
        fast.proposals.method, fast.proposals.rpn_weights = "rpn", str(out / "1_rpn" / FINAL)
        seed_everything(cfg.seed + 2)
        from_step1 = step2_starts_from_step1(cfg)
        # a backbone of its own; the starting weights unless step 1's backbone replaces all that they hold
        keeps_initial = not resumes(folder, resume) and (not from_step1 or bool(cfg.model.weights))
        model = build_model(fast, num_classes, init_weights=keeps_initial)
        if from_step1:
            load_model_weights(out / "1_rpn" / FINAL, model.backbone, prefix="backbone.")  # body and FPN, strict
        with_proposals = copy.copy(train_set)
        with_proposals.proposals = ProposalStore(store, fill_hint=(  # step 1's RPN fills it, not tools/propose.py
            f"delete {out / '1_proposals' / 'stage_done.json'} and rerun train.py with --resume to fill it again "
            f"from step 1's RPN"))
        return fit(cfg, model, with_proposals, device, folder, resume, max_iter=iters[1], base_lr=lrs[1],
                   progress=progress)

    def step3(folder: Path, resume: bool) -> dict[str, Any]:
        # all but the RPN from step 2; the RPN from model.weights when it holds one, else initialised afresh
        model = faster_rcnn(cfg.seed + 3, init_weights=not resumes(folder, resume) and bool(cfg.model.weights))
        load_parts(model, out / "2_fast_rcnn" / FINAL, "rpn.")
        model.freeze("backbone", "roi_heads")
        return fit(cfg, model, train_set, device, folder, resume, max_iter=iters[2], base_lr=lrs[2],
                   progress=progress)

    def step4(folder: Path, resume: bool) -> dict[str, Any]:
        model = faster_rcnn(cfg.seed + 4)
        load_model_weights(out / "3_rpn" / FINAL, model)
        model.freeze("backbone", "rpn")
        return fit(cfg, model, train_set, device, folder, resume, max_iter=iters[3], base_lr=lrs[3],
                   progress=progress)

    runs = (step1, proposals, step2, step3, step4)
    return [Stage(name, run) for name, run in zip(ALTERNATING_STEPS, runs)]


def train_alternating(cfg: Config, train_set: Any, device: torch.device, *, resume: bool = False,
                      progress: bool = True) -> tuple[TwoStageDetector, dict[str, Any]]:
    """Runs (or resumes) 4-step alternating training in cfg.output_dir; returns the final Faster R-CNN, loaded from
    <output_dir>/model_final.pth, and a training summary (img/s over all SGD steps)."""
    out = Path(cfg.output_dir)
    stages = alternating_stages(cfg, train_set, device, progress=progress)
    if not resume:  # the output-folder guard allowed a fresh start (--overwrite): old stages go
        if is_main_process():
            for stage in stages:
                shutil.rmtree(out / stage.name, ignore_errors=True)
        barrier()  # no rank looks for a done marker before the old ones are gone
    results = run_stages(stages, out, resume=resume)
    if is_main_process():
        link_or_copy(out / ALTERNATING_STEPS[-1] / FINAL, out / FINAL)
    barrier()  # every rank loads model_final.pth below
    model = build_model(cfg, len(cfg.model.class_names), init_weights=False)
    load_model_weights(out / FINAL, model)
    sgd = [results[name] for name in ALTERNATING_STEPS if name != "1_proposals"]
    seconds = sum(r.get("train/time_s", 0.0) for r in sgd)
    images = sum(r.get("train/img_per_s", 0.0) * r.get("train/time_s", 0.0) for r in sgd)
    summary = {"train/img_per_s": images / seconds if seconds > 0 else float("nan"), "train/time_s": seconds}
    return model.to(device), summary
