"""The schema of a detkit config: every valid key, its type and its default.

A YAML config (see configs/) sets any subset of these keys; detkit.config validates it against this schema. A key
that picks a part (``Annotated[str, Names(registry)]``) takes the names of its registry in detkit.registries, so a
part registered there is a valid value with no change here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, Union

from detkit import registries
from detkit.registries import Names


@dataclass
class DatasetConfig:
    format: Annotated[str, Names(registries.FORMATS)] = "demo"  # a name of registries.FORMATS
    root: Optional[str] = None  # dataset folder; None takes data.root
    split: Optional[str] = None  # VOC image-set name; COCO image folder under root; demo train / test
    ann_file: Optional[str] = None  # COCO annotation JSON, relative to root
    proposals: Optional[str] = None  # proposal store folder (Fast R-CNN / R-CNN), filled by tools/propose.py


@dataclass
class DataConfig:
    root: Optional[str] = None  # shared root for train and test (e.g. the BCCD folder)
    train: DatasetConfig = field(default_factory=lambda: DatasetConfig(split="train"))
    test: DatasetConfig = field(default_factory=lambda: DatasetConfig(split="test"))
    demo_cache: Optional[str] = None  # where the demo dataset is generated (default ~/.cache/detkit/demo)
    skip_corrupt: bool = False  # skip unreadable images with a warning instead of stopping
    max_image_pixels: Optional[int] = 89_478_485  # cap on width x height, read from the header (PIL's); null: none
    unknown_classes: Literal["error", "ignore"] = "error"  # a class in the data not in the run's class list
    num_workers: int = 2
    aspect_ratio_grouping: bool = True


@dataclass
class InputConfig:
    min_size: Union[int, list[int]] = 800  # shorter side after resizing; a list picks one at random in training
    max_size: int = 1333  # cap on the longer side
    test_min_size: Optional[int] = None  # shorter side at test time (default: min_size, or its largest value)
    flip_prob: float = 0.5
    color_jitter: float = 0.0
    # RGB in [0, 1]; null: the weights' own (a torchvision name's transforms), else ImageNet's
    # [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225]; a value set here wins (a note is printed if it differs)
    pixel_mean: Optional[list[float]] = None
    pixel_std: Optional[list[float]] = None


@dataclass
class SolverConfig:
    max_iter: int = 1000
    batch_size: int = 4
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_policy: Literal["step", "cosine"] = "step"
    steps: list[float] = field(default_factory=lambda: [0.75])  # decay points, as fractions of max_iter
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    grad_clip: Optional[float] = None  # max gradient norm; None turns clipping off
    amp: Literal["off", "bf16", "fp16"] = "off"  # mixed precision: bf16 on CUDA or CPU, fp16 (loss-scaled) on CUDA
    checkpoint_period: int = 500
    log_period: int = 20


@dataclass
class ProposalsConfig:
    """How tools/propose.py fills a proposal store (Fast R-CNN and R-CNN read proposals as data)."""

    method: Literal["selective_search", "rpn"] = "selective_search"
    mode: Literal["fast", "quality"] = "fast"  # selective search setting (Uijlings et al. 2013)
    max_side: int = 500  # images are scaled so the long side is at most this before the search
    min_size: float = 1.0  # proposals narrower or shorter than this (stored-image pixels) are dropped
    top_k: int = 2000  # proposals kept per image (Fast R-CNN paper: ~2000 selective-search boxes per image)
    workers: int = 1  # processes for the search (OpenCV runs one thread in each)
    rpn_weights: Optional[str] = None  # with method rpn: the trained Faster R-CNN whose RPN proposes


@dataclass
class BackboneConfig:
    name: Annotated[str, Names(registries.BACKBONES)] = "resnet50"  # a name of registries.BACKBONES
    fpn: bool = True
    # sync_bn: BatchNorm statistics over all ranks; auto: frozen_bn when starting from weights (model.weights or
    # model.backbone.weights), else bn (torchvision's detection builders)
    norm: Literal["auto", "bn", "frozen_bn", "gn", "sync_bn"] = "auto"
    # ImageNet weights: a local torchvision-format file, a torchvision weights name (ResNet50_Weights.DEFAULT) or a
    # URL, fetched once into $TORCH_HOME/hub/checkpoints (detkit.modeling.backbones.pretrained)
    weights: Optional[str] = None
    trainable_layers: Optional[int] = None  # stages trained (0-5); null: 3 when starting from weights, else 5
    channels_last: bool = False  # NHWC convolutions (for tensor cores on GPU; no gain measured on CPU)


@dataclass
class RPNConfig:
    anchor_sizes: list[list[float]] = field(default_factory=lambda: [[32.0], [64.0], [128.0], [256.0], [512.0]])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    min_size: float = 1e-3


@dataclass
class RoIHeadsConfig:
    pooler: Annotated[str, Names(registries.POOLERS)] = "roi_align"  # a name of registries.POOLERS
    pooler_resolution: int = 7
    sampling_ratio: int = 2
    aligned: bool = True  # half-pixel-corrected RoIAlign (torchvision's MultiScaleRoIAlign uses false)
    box_head: Annotated[str, Names(registries.BOX_HEADS)] = "auto"  # auto: two_mlp with FPN, else the backbone's
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    bg_iou_lo: float = 0.0  # background RoIs have IoU in [bg_iou_lo, bg_iou_thresh) (Fast R-CNN: 0.1)
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    representation_size: int = 1024  # width of the 2-MLP box head (FPN)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    svd_rank: Optional[int] = None  # truncated SVD of fc6/fc7 at test time (Fast R-CNN §3.1); None keeps them


@dataclass
class RCNNConfig:
    """R-CNN (Girshick et al. 2014): warping, SVM training with hard-negative mining, box regression."""

    warp_size: int = 227  # regions are warped to warp_size x warp_size (§2.1)
    context_pad: int = 16  # pixels of context around each region in the warped frame (appendix A)
    feature_norm: float = 20.0  # fc7 and pool5 features rescaled to this mean L2 norm (reference code)
    svm_C: float = 0.001  # liblinear C (reference code)
    svm_bias_scale: float = 10.0  # liblinear -B: the bias feature's value (reference code)
    svm_pos_weight: float = 2.0  # liblinear -w1: weight of the positives (reference code)
    svm_neg_iou: float = 0.3  # negatives: IoU below this with every box of the class (§2.3, grid-searched)
    svm_rounds: int = 5  # hard-negative mining rounds at most (stops earlier when no new hard negative appears)
    svm_init_negatives: int = 5000  # random negatives of the first round, per class
    svm_cache_size: int = 50000  # bound on the hard-negative cache, per class
    reg_alpha: float = 1000.0  # ridge lambda of the box regressors (appendix C)
    reg_iou: float = 0.6  # proposals with IoU above this to a ground-truth box train the regressors (appendix C)
    features_per_image: int = 2000  # proposals per training image whose features are cached (top of the store)
    score_thresh: float = -1.0  # SVM margin a detection needs before NMS
    nms_thresh: float = 0.3  # per-class NMS IoU at test time (§2.2)


@dataclass
class ModelConfig:
    arch: Annotated[str, Names(registries.ARCHS)] = "faster_rcnn"  # a name of registries.ARCHS
    num_classes: Optional[int] = None  # foreground classes; None takes the class list's length
    class_names: Optional[list[str]] = None  # label k names class_names[k - 1]; None: the training set's classes
    category_ids: Optional[list[int]] = None  # COCO category id of each class; None: the training set's (VOC: 1..K)
    # A whole detector to start from (iteration 0, fresh optimizer): a torchvision detection weights name
    # (FasterRCNN_ResNet50_FPN_Weights.COCO_V1), a torchvision state_dict file or a detkit model_final.pth /
    # last.pth; class-dependent layers are re-initialised when the class count differs (detkit.modeling.build.weights)
    weights: Optional[str] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    rcnn: RCNNConfig = field(default_factory=RCNNConfig)


@dataclass
class AlternatingConfig:
    """The 4 steps of alternating training (Ren et al. 2015 §3.2): RPN, Fast R-CNN, RPN fine-tune, Fast R-CNN
    fine-tune. Defaults: the reference code's 80k / 40k / 80k / 40k iterations, all at one learning rate
    (py-faster-rcnn, tools/train_faster_rcnn_alt_opt.py and its stage solvers, base_lr 0.001 each)."""

    iter_fractions: list[float] = field(default_factory=lambda: [1 / 3, 1 / 6, 1 / 3, 1 / 6])  # of solver.max_iter
    lr_factors: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])  # times solver.base_lr
    # Step 2's backbone. fresh: initialised afresh, from model.backbone.weights or model.weights (the paper: both
    # networks start from the ImageNet model); step1: a copy of the step-1 RPN's trained backbone; auto: fresh when
    # model.backbone.weights or model.weights is set, else step1 (from scratch there is no pretrained network to start both from, and
    # a fresh step-2 backbone trains only during step 2 before steps 3-4 freeze it). Measured on the demo data with
    # configs/demo.yaml's step lengths: 0.686 mAP against joint's 0.710 (docs/benchmarks.md, "Training schedules").
    step2_backbone: Literal["auto", "fresh", "step1"] = "auto"


@dataclass
class ExactJointConfig:
    """Exact joint training (train.schedule=exact_joint): the detector's loss reaches the RPN's box regression
    through RoIAlign's box gradient, weighted by proposal_grad_scale (forward values unchanged); the default is
    the measured choice (docs/benchmarks.md, "Training schedules", has the figures)."""

    proposal_grad_scale: float = 0.01


@dataclass
class TrainConfig:
    # joint: approximate joint training (end to end, proposals detached); exact_joint: proposals not detached, the
    # detector's loss reaches the RPN's box regression through RoIAlign; alternating: the paper's 4 steps
    schedule: Annotated[str, Names(registries.schedules)] = "joint"  # registries.RECIPES but the archs' own
    alternating: AlternatingConfig = field(default_factory=AlternatingConfig)
    exact_joint: ExactJointConfig = field(default_factory=ExactJointConfig)
    eval_period: int = 0  # evaluate on data.test every N iterations (0: only at the end)


@dataclass
class TestConfig:
    # Mixed precision at test time: auto = bf16 autocast where the CPU has native bf16 (AVX512-BF16 / AMX) or on
    # CUDA, float32 elsewhere; see docs/benchmarks.md "CPU inference levers" for the measured speed and mAP.
    amp: Literal["auto", "off", "bf16"] = "auto"
    fold_bn: bool = True  # fold eval-mode BatchNorm / frozen BN into the convolution before it (detkit.modeling.fuse)
    # CPU inference: RoIAlign as one multi-threaded gather in the features' dtype (detkit.ops.roi_align_gather)
    gather_roi_align: bool = True
    channels_last: bool = True  # NHWC images into the backbone at test time (as model.backbone.channels_last)
    report: bool = True  # write report.html (error analysis, detkit.report) after the test evaluation
    # images per forward in eval.py, infer.py and the evaluation after training; > 1 pads them to one size, which
    # moves detections slightly at the borders of smaller images (docs/benchmarks.md "Batched inference")
    batch_size: int = 1


@dataclass
class OpsConfig:
    backend: Literal["auto", "triton", "torchvision"] = "auto"


PROVENANCE = {"provenance": True}  # marks the Config fields that are not keys


@dataclass
class Config:
    output_dir: str = "outputs/run"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    proposals: ProposalsConfig = field(default_factory=ProposalsConfig)
    # Provenance, not config keys (never read from a file, never saved): the file or command line that set each
    # dotted key, and the keys the user set whatever their value (detkit.config.load_config fills both).
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False, metadata=PROVENANCE)
    user_keys: frozenset[str] = field(default_factory=frozenset, repr=False, compare=False, metadata=PROVENANCE)
    # What detkit.config_checks.check_config last checked (None: never): build_model and the recipes check again
    # only a config whose keys changed since, or that was built in Python.
    checked: Optional[tuple] = field(default=None, repr=False, compare=False, metadata=PROVENANCE)
