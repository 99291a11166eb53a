"""The edge where a Config becomes arguments for every run, training or not: run set-up, a config's datasets and
proposal stores, a trained model from a config and its weights file (Fast R-CNN and R-CNN with a selective-search proposal
generator, so every trained detector is callable on an image alone).

The inference tools (eval.py, infer.py, propose.py) need only this module, detkit.evaluation and detkit.modeling;
the training recipes (detkit.recipes) build on it. Nothing here imports training code.
"""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit import ops
from detkit.config import Config
from detkit.data import build_dataset
from detkit.data.check import check_datasets, check_store
from detkit.data.proposal_store import ProposalStore
from detkit.data.classes import ClassList, apply_class_list, trained_class_list
from detkit.data.image_io import set_max_image_pixels
from detkit.data.transforms import build_transforms
from detkit.engine import run_dir
from detkit.engine.checkpoint import load_model_weights, read_class_meta
from detkit.errors import DetkitError
from detkit.modeling.proposals.search_generator import SelectiveSearchProposals
from detkit.modeling.build import build_detector, build_model, needs_proposals, prepare_for_test


def setup(cfg: Config, make_output_dir: bool = True) -> torch.device:
    """Seeds, threads, ops backend (and output folder) for a run; returns the device to use. The config's keys were
    checked when it was loaded (detkit.config.load_config) or by detkit.recipes.train."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ops.set_backend(cfg.ops.backend)
    set_max_image_pixels(cfg.data.max_image_pixels)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise DetkitError("config key 'device' is 'cuda' but no CUDA device is available (use device=auto or cpu)")
    if make_output_dir:
        run_dir.make_output_dir(cfg.output_dir)
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_trained(cfg: Config, weights: str | Path) -> nn.Module:
    """The config's detector with weights from a model_final.pth or a training checkpoint, in eval mode.

    Fills cfg.model.class_names and category_ids with the class list stored with the weights (which the config's
    own, when set, must equal), so the recipe plus the weights file are enough.
    """
    m = cfg.model
    stored = ClassList.from_meta(read_class_meta(weights))
    classes = trained_class_list(m.class_names, m.category_ids, m.num_classes, stored, str(weights))
    m.class_names, m.category_ids = list(classes.names), list(classes.category_ids)
    model = build_detector(cfg, num_classes=len(classes), init_weights=False)  # no initial weights are fetched
    load_model_weights(weights, model)
    if model.needs_proposals:  # callable on an image alone: selective search with the proposals.* settings
        p = cfg.proposals
        model.test_proposal_generator = SelectiveSearchProposals(mode=p.mode, max_side=p.max_side,
                                                                 min_size=p.min_size, top_k=p.top_k)
    return prepare_for_test(model, cfg).eval()


def class_list(cfg: Config) -> ClassList:
    """The run's class list from a config whose model.class_names is filled (by training or load_trained)."""
    if not cfg.model.class_names:
        raise DetkitError("the config names no classes (model.class_names); use the config.yaml a training run wrote")
    return ClassList.make(cfg.model.class_names, cfg.model.category_ids)


def build_split(cfg: Config, split: str, classes: ClassList | None = None, progress: bool = True) -> Any:
    """The train or test dataset of a config (training augmentation on the train split only), its labels
    renumbered to the class list when one is given; with a proposal store (data.<split>.proposals), its proposals
    too, computed first when the store is missing or incomplete."""
    d = getattr(cfg.data, split)
    train = split == "train"
    transforms = build_transforms(train=True, flip_prob=cfg.input.flip_prob,
                                  color_jitter=cfg.input.color_jitter) if train else None
    dataset = build_dataset(d.format, d.root, d.split, d.ann_file, train=train, transforms=transforms,
                            skip_corrupt=cfg.data.skip_corrupt, demo_cache=cfg.data.demo_cache)
    if classes is not None:
        apply_class_list(dataset, classes, cfg.data.unknown_classes, where=f"data.{split}")
    if needs_proposals(cfg.model.arch) and not d.proposals:
        raise DetkitError(f"model.arch={cfg.model.arch} reads proposals from a store: set data.{split}.proposals "
                          "(a folder; tools/propose.py fills it)")
    if d.proposals:
        from detkit.data.proposals import ProposalStore

        dataset.proposals = ProposalStore(ensure_proposals(cfg, split, progress=progress))
    return dataset


def rpn_config(cfg: Config) -> Config:
    """The Faster R-CNN config whose RPN proposes for cfg's detector (``proposals.method: rpn``): the same backbone
    and RPN keys; R-CNN's own keys (``model.rcnn.*``) go back to their defaults and no longer count as set by the
    user, so the key check of the Faster R-CNN build does not refuse them."""
    from detkit.config_schema import RCNNConfig

    rpn_cfg = copy.deepcopy(cfg)
    rpn_cfg.model.arch = "faster_rcnn"  # the RPN of the config's backbone, whatever detector trains next
    rpn_cfg.model.rcnn = RCNNConfig()
    rpn_cfg.user_keys = frozenset(k for k in cfg.user_keys if not k.startswith("model.rcnn."))
    return rpn_cfg


def ensure_proposals(cfg: Config, split: str, progress: bool = True) -> Path | None:
    """Fills the store data.<split>.proposals from cfg.proposals.* where images are missing; its path, or None."""

    from detkit.data.proposals import ProposalStore, propose_dataset, proposal_settings

    d = getattr(cfg.data, split)
    if not d.proposals:
        return None
    p = cfg.proposals
    store = ProposalStore(d.proposals)
    dataset = build_dataset(d.format, d.root, d.split, d.ann_file, train=split == "train",
                            skip_corrupt=cfg.data.skip_corrupt, demo_cache=cfg.data.demo_cache)
    rpn_model = None
    if p.method == "rpn":
        proposal_settings(method="rpn", rpn_weights=p.rpn_weights)  # a missing weights file fails here, first
        if not all(store.has(i) for i in dataset.image_ids):  # the model is built only when there is work
            rpn_model = build_model(rpn_config(cfg), num_classes=len(cfg.model.class_names or dataset.classes),
                                    init_weights=False)
            load_model_weights(p.rpn_weights, rpn_model)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    propose_dataset(dataset, store, method=p.method, mode=p.mode, max_side=p.max_side, min_size=p.min_size, top_k=p.top_k,
                    workers=p.workers, rpn_model=rpn_model, rpn_weights=p.rpn_weights, device=device,
                    progress=progress)
    return store.root


def _config_settings(cfg: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The store settings cfg.proposals asks for, or (None, the reason they cannot be known)."""
    from detkit.data.proposals import proposal_settings

    p = cfg.proposals
    try:
        return proposal_settings(method=p.method, mode=p.mode, max_side=p.max_side, min_size=p.min_size,
                                 top_k=p.top_k, rpn_weights=p.rpn_weights), None
    except DetkitError as error:
        return None, str(error)


def check_config_data(cfg: Any) -> int:
    """Check both splits of a config and their proposal stores; print every problem and a summary; return 0 when
    clean, else 1. Nothing is written: a missing store is reported, not filled."""
    set_max_image_pixels(cfg.data.max_image_pixels)
    datasets = {}
    for split in ("train", "test"):
        d = getattr(cfg.data, split)
        datasets[split] = build_dataset(d.format, d.root, d.split, d.ann_file, train=split == "train",
                                        skip_corrupt=cfg.data.skip_corrupt, demo_cache=cfg.data.demo_cache)
    problems = check_datasets(datasets, workers=max(1, cfg.data.num_workers))
    stores = 0
    for split, dataset in datasets.items():
        root = getattr(cfg.data, split).proposals
        if root:
            stores += 1
            settings, reason = _config_settings(cfg)
            problems += [f"[{split}] {reason}"] if reason else []
            problems += [f"[{split}] {item}" for item in check_store(ProposalStore(root), dataset, settings)]
    for problem in problems:
        print(problem)
    total = sum(len(ds) for ds in datasets.values())
    also = f" and {stores} proposal store(s)" if stores else ""
    print(f"check data: {len(problems)} problem(s) among {total} images{also}" if problems
          else f"check data: all {total} images decode and their annotations{also} are valid")
    return 1 if problems else 0
