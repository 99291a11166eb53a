"""Joint training (Ren et al. 2015 §3.2): one ordinary Trainer run of the whole Faster R-CNN (or Fast R-CNN on stored
proposals) in output_dir itself, evaluated on data.test at the end.

``train.schedule``:
    joint         approximate joint training: the RPN's proposals are detached
    exact_joint   the same run; build_model gives an RPN whose proposals are not detached, so the RoI heads' loss
                  reaches the RPN's box regression through RoIAlign's box gradient (detkit.modeling.proposals.rpn)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.config import Config
from detkit.evaluation.amp import with_test_amp
from detkit.evaluation.predict import evaluate_sharded
from detkit.modeling.build import build_detector
from detkit.recipes.common import make_trainer, report_trained


def train_joint(cfg: Config, train_set: Any, test_set: Any, device: torch.device, *, resume: bool = False,
                progress: bool = True) -> dict[str, float]:
    """Trains the config's detector in cfg.output_dir (evaluating every train.eval_period iterations when set),
    then reports it on test_set; returns the metrics."""
    fresh = not (resume and (Path(cfg.output_dir) / "last.pth").is_file())  # a resumed run loads last.pth instead
    model = build_detector(cfg, num_classes=len(cfg.model.class_names), init_weights=fresh)

    def eval_fn(m: nn.Module) -> dict:
        return evaluate_sharded(with_test_amp(m, cfg.test.amp, device), test_set, device, cfg.data.num_workers,
                                progress=progress, batch_size=cfg.test.batch_size)[0]

    trainer = make_trainer(cfg, model, train_set, device, cfg.output_dir, progress=progress,
                           eval_fn=eval_fn if cfg.train.eval_period else None)
    summary = trainer.train(resume=resume)
    return report_trained(cfg, model, summary, test_set, device, progress)
