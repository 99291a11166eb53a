"""Config -> detector: modeling's one edge, where model config keys become constructor arguments (this package:
the builders here, a run's starting weights and the defaults that follow from them in ``build.weights``).

``model.arch`` picks the builder from detkit.registries.ARCHS (which names the functions here) and
``model.roi_heads.box_head`` the box head from registries.BOX_HEADS; every builder fills the parts of a
TwoStageDetector. The keys were checked when the config was loaded (or, for a Config built in Python, by
build_model, once: detkit.config_checks.ensure_checked).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from detkit.config_checks import box_head_kind, check_svd_rank, ensure_checked, has_rpn
from detkit.config_checks import check_keys_apply, check_schedule  # noqa: F401 (their home before config_checks)
from detkit.config_schema import Config
from detkit.errors import DetkitError
from detkit.ranks import get_world_size
from detkit.registries import ARCHS, BOX_HEADS, resolve
from detkit.modeling.backbones import build_backbone, build_res5_head, build_vgg_fc_head
from detkit.modeling.detectors.fast_rcnn import FastRCNN
from detkit.modeling.detectors.faster_rcnn import FasterRCNN, default_box_feature_names
from detkit.modeling.detectors.two_stage import TwoStageDetector
from detkit.modeling.preprocess import ImagePreprocessor
from detkit.modeling.proposals.anchors import AnchorGenerator
from detkit.modeling.proposals.rpn import RegionProposalNetwork, RPNHead
from detkit.modeling.roi_heads.box_head import TwoMLPHead, compress_box_head
from detkit.modeling.roi_heads.poolers import RoIPooler
from detkit.modeling.roi_heads.predictors import FastRCNNPredictor
from detkit.modeling.roi_heads.roi_heads import RoIHeads
from detkit.modeling.build.weights import finish_build, resolved_config

def two_mlp_box_head(cfg: Config, in_channels: int) -> nn.Module:
    """model.roi_heads.box_head=two_mlp: two fc layers of representation_size over the flattened pooled map."""
    rh = cfg.model.roi_heads
    return TwoMLPHead(in_channels * rh.pooler_resolution ** 2, rh.representation_size)


def vgg_fc_box_head(cfg: Config, in_channels: int) -> nn.Module:
    """model.roi_heads.box_head=vgg_fc: VGG16's fc6 / fc7 (a VGG backbone without FPN, 7 x 7 pooling)."""
    bb, rh = cfg.model.backbone, cfg.model.roi_heads
    if not bb.name.startswith("vgg") or bb.fpn or rh.pooler_resolution != 7:
        raise DetkitError("config key 'model.roi_heads.box_head' is vgg_fc, which needs a VGG backbone without "
                          f"FPN and pooler_resolution 7 (got {bb.name}, fpn={bb.fpn}, {rh.pooler_resolution})")
    return build_vgg_fc_head(weights=bb.weights)


def res5_box_head(cfg: Config, in_channels: int) -> nn.Module:
    """model.roi_heads.box_head=res5: the ResNet's res5 stage over C4 RoIs (a ResNet backbone without FPN)."""
    bb = cfg.model.backbone
    if not bb.name.startswith("resnet") or bb.fpn:
        raise DetkitError("config key 'model.roi_heads.box_head' is res5, which needs a ResNet backbone without FPN "
                          f"(got {bb.name}, fpn={bb.fpn})")
    return build_res5_head(bb.name, norm=_built_norm(bb.norm), weights=bb.weights)


def auto_box_head(cfg: Config, in_channels: int) -> nn.Module:
    """model.roi_heads.box_head=auto: two_mlp with FPN, else the backbone's own (vgg_fc or res5)."""
    return resolve(BOX_HEADS[box_head_kind(cfg)])(cfg, in_channels)


def build_rpn(cfg: Config, in_channels: int, num_levels: int) -> RegionProposalNetwork:
    """The RPN of cfg.model.rpn for a backbone with num_levels feature maps."""
    r = cfg.model.rpn
    if len(r.anchor_sizes) != num_levels:
        raise DetkitError(f"config key 'model.rpn.anchor_sizes' has {len(r.anchor_sizes)} levels but the backbone "
                          f"{cfg.model.backbone.name} (fpn={cfg.model.backbone.fpn}) gives {num_levels} feature maps")
    anchor_generator = AnchorGenerator(r.anchor_sizes, r.aspect_ratios)
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchor_generator, head, fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        pre_nms_top_n={"training": r.pre_nms_top_n_train, "testing": r.pre_nms_top_n_test},
        post_nms_top_n={"training": r.post_nms_top_n_train, "testing": r.post_nms_top_n_test},
        nms_thresh=r.nms_thresh, min_size=r.min_size, differentiable_proposals=cfg.train.schedule == "exact_joint",
        proposal_grad_scale=cfg.train.exact_joint.proposal_grad_scale)


def build_roi_heads(cfg: Config, backbone: nn.Module, num_classes: int) -> RoIHeads:
    """Pooler, box head and softmax predictor of cfg.model.roi_heads (num_classes counts the foreground)."""
    rh = cfg.model.roi_heads
    strides = [backbone.strides[n] for n in default_box_feature_names(backbone)]
    pooler = RoIPooler(rh.pooler_resolution, strides, sampling_ratio=rh.sampling_ratio, pooler_type=rh.pooler,
                       aligned=rh.aligned)
    box_head = resolve(BOX_HEADS[rh.box_head])(cfg, backbone.out_channels)
    if not 0.0 <= rh.bg_iou_lo <= rh.bg_iou_thresh:
        raise DetkitError(f"config key 'model.roi_heads.bg_iou_lo' is {rh.bg_iou_lo}; it must be in "
                          f"[0, model.roi_heads.bg_iou_thresh = {rh.bg_iou_thresh}]")
    return RoIHeads(pooler, box_head, FastRCNNPredictor(box_head.out_channels, num_classes + 1),
                    fg_iou_thresh=rh.fg_iou_thresh, bg_iou_thresh=rh.bg_iou_thresh, bg_iou_lo=rh.bg_iou_lo,
                    batch_size_per_image=rh.batch_size_per_image, positive_fraction=rh.positive_fraction,
                    score_thresh=rh.score_thresh, nms_thresh=rh.nms_thresh, detections_per_img=rh.detections_per_img)


def _common_parts(cfg: Config, num_classes: int) -> dict[str, Any]:
    bb = cfg.model.backbone
    backbone = build_backbone(bb.name, fpn=bb.fpn, norm=_built_norm(bb.norm), weights=bb.weights,
                              trainable_layers=bb.trainable_layers)
    preprocessor = ImagePreprocessor(cfg.input.min_size, cfg.input.max_size, pixel_mean=cfg.input.pixel_mean,
                                     pixel_std=cfg.input.pixel_std, test_min_size=cfg.input.test_min_size)
    return {"backbone": backbone, "roi_heads": build_roi_heads(cfg, backbone, num_classes),
            "preprocessor": preprocessor, "channels_last": bb.channels_last}


def build_faster_rcnn(cfg: Config, num_classes: int) -> FasterRCNN:
    """Faster R-CNN: the common parts and an RPN."""
    parts = _common_parts(cfg, num_classes)
    backbone = parts["backbone"]
    return FasterRCNN(num_classes=num_classes + 1, rpn=build_rpn(cfg, backbone.out_channels, len(backbone.strides)),
                      **parts)


def build_fast_rcnn(cfg: Config, num_classes: int) -> FastRCNN:
    """Fast R-CNN: the common parts; proposals come with the data."""
    return FastRCNN(num_classes=num_classes + 1, **_common_parts(cfg, num_classes))


def build_rcnn(cfg: Config, num_classes: int) -> TwoStageDetector:
    """R-CNN: warped regions through the whole CNN, SVMs and ridge regressors (detkit.modeling.detectors.rcnn)."""
    from detkit.modeling.detectors.rcnn import RCNN, build_rcnn_heads
    from detkit.modeling.roi_heads.region_cnn import build_region_cnn

    bb, rh, r = cfg.model.backbone, cfg.model.roi_heads, cfg.model.rcnn
    if bb.fpn:
        raise DetkitError("config key 'model.backbone.fpn' must be false for model.arch=rcnn (the CNN sees one "
                          "warped region, there is no pyramid)")
    if not 0 <= 2 * r.context_pad < r.warp_size:
        raise DetkitError(f"config keys 'model.rcnn.context_pad' ({r.context_pad}) and 'model.rcnn.warp_size' "
                          f"({r.warp_size}): need 0 <= 2 * context_pad < warp_size")
    cnn = build_region_cnn(bb.name, r.warp_size, norm=_built_norm(bb.norm), weights=bb.weights,
                           trainable_layers=bb.trainable_layers)
    heads = build_rcnn_heads(cnn, num_classes + 1, warp_size=r.warp_size, context_pad=r.context_pad,
                             batch_size_per_image=rh.batch_size_per_image, positive_fraction=rh.positive_fraction,
                             score_thresh=r.score_thresh, nms_thresh=r.nms_thresh,
                             detections_per_img=rh.detections_per_img)
    preprocessor = ImagePreprocessor(cfg.input.min_size, cfg.input.max_size, pixel_mean=cfg.input.pixel_mean,
                                     pixel_std=cfg.input.pixel_std, test_min_size=cfg.input.test_min_size)
    return RCNN(num_classes + 1, roi_heads=heads, preprocessor=preprocessor)


def needs_proposals(arch: str) -> bool:
    """True for an arch whose detector reads proposals from the data: no RPN of its own (config_checks.has_rpn)."""
    return not has_rpn(arch)


def build_model(cfg: Config, num_classes: int | None = None, *, init_weights: bool = True) -> TwoStageDetector:
    """The detector a config describes; num_classes counts foreground classes (cfg.model.num_classes wins).

    init_weights: load the starting weights (model.weights, model.backbone.weights; fetched into torch.hub's cache
    when named); False builds the same network without them, for a trained file to load into (eval, --resume)."""
    num_classes = cfg.model.num_classes or num_classes
    if num_classes is None:
        raise DetkitError("the number of classes is unknown: set model.num_classes or build from a dataset")
    ensure_checked(cfg)  # a loaded config was checked by load_config; one built in Python is checked here, once
    built = resolved_config(cfg, init_weights=init_weights)  # auto norm / trainable stages / normalisation filled
    return finish_build(resolve(ARCHS[built.model.arch])(built, num_classes), built, init_weights=init_weights)


def _built_norm(norm: str) -> str:
    """The norm layer built: sync_bn builds BatchNorm (build_detector converts it under a process group)."""
    return "bn" if norm == "sync_bn" else norm


def build_detector(cfg: Config, num_classes: int, *, init_weights: bool = True) -> TwoStageDetector:
    """build_model, where model.backbone.norm sync_bn builds BatchNorm and, under a process group, converts it to
    SyncBatchNorm (the two share one state_dict, so weights load either way)."""
    model = build_model(cfg, num_classes=num_classes, init_weights=init_weights)
    if cfg.model.backbone.norm == "sync_bn" and get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def prepare_for_test(model: TwoStageDetector, cfg: Config) -> TwoStageDetector:
    """Applies the test-time options of a config to a trained model (model.roi_heads.svd_rank and
    test.fold_bn, gather_roi_align, channels_last); returns it, in eval mode when test.fold_bn is on."""
    from detkit.modeling.fuse import speed_up_inference  # after training: a folded model has no BatchNorm to train

    t = cfg.test
    speed_up_inference(model, fold_bn=t.fold_bn, gather_roi_align=t.gather_roi_align, channels_last=t.channels_last)
    rank = cfg.model.roi_heads.svd_rank
    if rank is not None:
        if rank <= 0:
            raise DetkitError(f"config key 'model.roi_heads.svd_rank' must be positive, got {rank}")
        check_svd_rank(cfg)
        box_head = model.roi_heads.box_head
        compress_box_head(getattr(box_head, "fc_head", box_head), rank)  # R-CNN's VGG CNN keeps fc6/fc7 in fc_head
    return model
