"""Pretrained weights by name, offline: a temporary $TORCH_HOME, files saved under the names torchvision expects
(random weights of the right architecture, made once per session), and torch.hub's download replaced by a copy
from those files (or a network error: offline). detkit's networks are compared with torchvision's own builders
loading from the same cache."""
from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torchvision.models import get_weight
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.config import load_config
from detkit.errors import DetkitError
from detkit.modeling.backbones import build_vgg_fc_head
from detkit.modeling.build import build_model
from detkit.modeling.build.weights import load_detector_weights, resolved_config

REPO = Path(__file__).resolve().parents[2]
R18_FPN = str(REPO / "configs" / "faster_rcnn_r18_fpn.yaml")
COCO_TO_VOC = str(REPO / "configs" / "finetune" / "faster_rcnn_r50_fpn_coco_to_voc.yaml")
R18 = "ResNet18_Weights.IMAGENET1K_V1"
COCO = "FasterRCNN_ResNet50_FPN_Weights.COCO_V1"
FEATURES = "VGG16_Weights.IMAGENET1K_FEATURES"


def _randomised(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every float tensor perturbed (BatchNorm's 1 / 0 statistics too, so frozen BN differs from identity)."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var"):
            out[key] = torch.rand_like(value) + 0.5
        else:
            out[key] = value + 0.1 * torch.randn_like(value) if value.is_floating_point() else value
    return out


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    """URL -> a local file of random weights with that URL's architecture (ResNet-18, ResNet-50, VGG16 features
    without the classifier, torchvision's COCO R50-FPN Faster R-CNN ~160 MB), made once per session."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.models.vgg import cfgs, make_layers

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    states = {
        R18: torchvision.models.resnet18().state_dict(),
        "ResNet50_Weights.IMAGENET1K_V1": torchvision.models.resnet50().state_dict(),
        FEATURES: {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()},
        COCO: fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
    }
    files = {}
    for name, state in states.items():
        url = get_weight(name).url
        files[url] = root / Path(url).name
        torch.save(_randomised(state), files[url])
    return files


@pytest.fixture
def hub(tmp_path, monkeypatch, weight_files):
    """An empty torch.hub cache under tmp_path; downloads copy from weight_files (other URLs: offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[str] = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        if url not in weight_files:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        shutil.copyfile(weight_files[url], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return SimpleNamespace(calls=calls, checkpoints=tmp_path / "torch" / "hub" / "checkpoints")


def _r18(*overrides: str):
    return load_config(R18_FPN, ["model.num_classes=3", "input.min_size=64", "input.max_size=64", *overrides])


def _counts(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def test_backbone_from_a_name_holds_what_torchvision_loads_and_is_fetched_once(hub):
    model = build_model(_r18("model.backbone.weights=ResNet18_Weights.DEFAULT"))
    assert hub.calls == [get_weight(R18).url]
    assert (hub.checkpoints / "resnet18-f37072fd.pth").is_file()
    theirs = torchvision.models.resnet18(weights="ResNet18_Weights.DEFAULT").state_dict()  # same cache, no download
    assert len(hub.calls) == 1
    ours = model.state_dict()
    compared = [k for k in theirs if not k.startswith("fc.") and _counts(k)]
    assert len(compared) == 100 and all(torch.equal(ours["backbone.body." + k], theirs[k]) for k in compared)
    # torchvision's fine-tuning defaults with pretrained weights: frozen BN, conv1 + layer1 frozen, 3 stages train
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    trainable = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert model.preprocessor.pixel_mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    build_model(_r18(f"model.backbone.weights={R18}"))  # a warm cache: no second download
    build_model(_r18(f"model.backbone.weights={get_weight(R18).url}"))  # its URL: the same cache file
    assert len(hub.calls) == 1


def test_from_scratch_keeps_batchnorm_and_trains_every_stage():
    model = build_model(_r18())
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_offline_and_not_cached_names_the_url_and_the_cache_path(hub):
    with pytest.raises(DetkitError) as error:
        build_model(_r18("model.backbone.name=resnet34", "model.backbone.weights=ResNet34_Weights.DEFAULT"))
    message = str(error.value)
    assert "\n" not in message and get_weight("ResNet34_Weights.DEFAULT").url in message
    assert str(hub.checkpoints / "resnet34-b627a593.pth") in message


def test_building_for_a_trained_file_fetches_nothing(hub, tmp_path):
    from detkit.edge import load_trained

    cfg = _r18(f"model.backbone.weights={R18}", "test.fold_bn=false")
    trained = build_model(cfg, init_weights=False)
    assert isinstance(trained.backbone.body.bn1, FrozenBatchNorm2d)  # the network trained from weights
    path = tmp_path / "model_final.pth"
    torch.save({"model": trained.state_dict(), "meta": {"class_names": ["a", "b", "c"]}}, path)
    for overrides in ([f"model.backbone.weights={R18}"], ["model.weights=/nowhere/else.pth"]):
        loaded = load_trained(_r18(*overrides, "test.fold_bn=false"), path)
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())
    assert hub.calls == []


def test_resume_and_eval_never_fetch_the_initial_weights(hub, tmp_path, monkeypatch):
    from detkit import edge, recipes
    from tests.test_tools_no_lost_work import TINY, tiny_voc

    data = tiny_voc(tmp_path / "voc", count=4)
    args = [f"output_dir={tmp_path / 'run'}", "data.train.format=voc", "data.test.format=voc", f"data.root={data}",
            "data.train.split=trainval", "data.test.split=test", *TINY, f"model.backbone.weights={R18}",
            "solver.base_lr=0.0001"]  # random weights under frozen BN: a small step keeps the loss finite
    recipes.train(load_config(R18_FPN, [*args, "solver.max_iter=1"]), progress=False)
    assert len(hub.calls) == 1
    (hub.checkpoints / "resnet18-f37072fd.pth").unlink()  # no cached file, and offline from here on
    tried: list[str] = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    recipes.train(load_config(R18_FPN, [*args, "solver.max_iter=2"]), resume=True, progress=False)
    edge.load_trained(load_config(str(tmp_path / "run" / "config.yaml")), tmp_path / "run" / "model_final.pth")
    assert tried == []
    with pytest.raises(DetkitError, match="could not download"):  # a fresh start does need them
        recipes.train(load_config(R18_FPN, [*args, "solver.max_iter=1"]), overwrite=True, progress=False)
    assert tried == [get_weight(R18).url]
    fresh = tmp_path / "fresh"  # offline, a fresh run fails before it writes anything: the same command runs again
    with pytest.raises(DetkitError, match="could not download"):
        recipes.train(load_config(R18_FPN, [*args, "solver.max_iter=1", f"output_dir={fresh}"]), progress=False)
    assert not fresh.exists()


def test_a_resumed_alternating_run_never_fetches_the_initial_weights(hub, tmp_path, monkeypatch):
    """Steps that load an earlier step's file (3_rpn, 4_fast_rcnn, the final model; 1_proposals too) need no
    starting weights: running them inside a resumed run works offline with an empty cache."""
    import shutil

    from detkit import recipes
    from tests.test_tools_no_lost_work import TINY, tiny_voc

    data = tiny_voc(tmp_path / "voc", count=4)
    run = tmp_path / "run"
    args = [f"output_dir={run}", "data.train.format=voc", "data.test.format=voc", f"data.root={data}",
            "data.train.split=trainval", "data.test.split=test", *TINY, f"model.backbone.weights={R18}",
            "model.backbone.norm=bn",  # random "pretrained" statistics under frozen BN overflow in the RPN-only step
            "solver.base_lr=0.0001", "train.schedule=alternating", "solver.max_iter=4"]
    recipes.train(load_config(R18_FPN, args), progress=False)
    assert len(hub.calls) == 1
    (hub.checkpoints / "resnet18-f37072fd.pth").unlink()  # no cached file, and offline from here on
    tried: list[str] = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, *a, **k: tried.append(url))
    for step in ("3_rpn", "4_fast_rcnn"):  # as if the run had been stopped before step 3
        shutil.rmtree(run / step)
    recipes.train(load_config(R18_FPN, args), resume=True, progress=False)
    assert tried == [] and (run / "4_fast_rcnn" / "stage_done.json").is_file()


def test_unknown_name_lists_the_close_names():
    with pytest.raises(DetkitError, match=r"close names: .*ResNet18_Weights\.IMAGENET1K_V1"):
        build_model(_r18("model.backbone.weights=ResNet18_Weights.IMAGENET1K_V3"))
    with pytest.raises(DetkitError, match=r"ResNet50_Weights\.IMAGENET1K_V2"):
        build_model(_r18("model.weights=Resnet50_Weights.IMAGENET1K_V2"))


def test_weights_of_another_architecture_name_the_first_mismatching_keys(hub, weight_files, tmp_path):
    r18_file = weight_files[get_weight(R18).url]
    with pytest.raises(DetkitError, match=r"lacks layer1\.2\.conv1\.weight"):  # ResNet-34 has 3 blocks in layer1
        build_model(_r18("model.backbone.name=resnet34", f"model.backbone.weights={r18_file}"))
    with pytest.raises(DetkitError, match="weights of torchvision's resnet18, but model.backbone.name is resnet50"):
        build_model(_r18("model.backbone.name=resnet50", f"model.backbone.weights={R18}"))
    vgg_file = weight_files[get_weight(FEATURES).url]
    with pytest.raises(DetkitError, match=r"lacks conv1\.weight"):
        build_model(_r18(f"model.backbone.weights={vgg_file}"))
    c4 = build_model(_r18("model.backbone.fpn=false", "model.rpn.anchor_sizes=[[32,64,128,256,512]]"))
    torch.save({"model": c4.state_dict()}, tmp_path / "c4.pth")
    with pytest.raises(DetkitError, match=r"is another architecture than the config's: the model's backbone\."):
        build_model(_r18(f"model.weights={tmp_path / 'c4.pth'}"))


def test_truncated_cache_file_is_named_with_the_advice_to_delete_it(hub, weight_files, tmp_path):
    hub.checkpoints.mkdir(parents=True)
    cached = hub.checkpoints / "resnet18-f37072fd.pth"
    cached.write_bytes(weight_files[get_weight(R18).url].read_bytes()[:100_000])
    with pytest.raises(DetkitError) as error:
        build_model(_r18(f"model.backbone.weights={R18}"))
    assert str(cached) in str(error.value) and "delete it" in str(error.value) and "\n" not in str(error.value)
    assert hub.calls == []  # never downloaded again behind the user's back
    # a training run reads the file before it writes anything, so after the deletion the same command runs again
    from detkit import recipes

    cached.write_bytes(b"not a checkpoint" * 64)  # not even a zip: torch's advice to load it unsafely is left out
    out = tmp_path / "run"
    with pytest.raises(DetkitError) as error:
        recipes.train(_r18(f"model.backbone.weights={R18}", f"output_dir={out}"), progress=False)
    assert "delete it" in str(error.value) and "weights_only=False" not in str(error.value)
    assert not out.exists() and hub.calls == []


def test_a_mistyped_data_path_is_reported_before_any_download(hub, tmp_path):
    from detkit import recipes

    out = tmp_path / "run"
    cases = [
        (["data.train.format=voc", f"data.train.root={tmp_path / 'BCDD'}"], "VOC split file"),
        (["data.test.format=coco", f"data.test.root={tmp_path}", "data.test.ann_file=instances_tset.json"],
         f"COCO annotation file {tmp_path / 'instances_tset.json'} does not exist"),
    ]
    for overrides, expected in cases:
        with pytest.raises(DetkitError, match=expected):
            recipes.train(_r18(f"model.backbone.weights={R18}", f"output_dir={out}", *overrides), progress=False)
    assert hub.calls == [] and not out.exists()


class _Payload:
    pass


def test_a_file_holding_pickled_code_is_refused(tmp_path):
    path = tmp_path / "code.pth"
    torch.save({"conv1.weight": torch.zeros(1), "hook": _Payload()}, path)
    for key in ("model.backbone.weights", "model.weights"):
        with pytest.raises(DetkitError, match="weights_only=True"):
            build_model(_r18(f"{key}={path}"))


def test_vgg_features_bring_their_normalisation_and_leave_fc6_fc7_random(hub, capsys):
    cfg = resolved_config(load_config(overrides=["model.backbone.name=vgg16", "model.backbone.fpn=false",
                                                 f"model.backbone.weights={FEATURES}"]))
    assert cfg.input.pixel_mean == pytest.approx([0.48235, 0.45882, 0.40784])
    assert cfg.input.pixel_std == pytest.approx([1 / 255] * 3)
    mine = resolved_config(load_config(overrides=["model.backbone.name=vgg16", f"model.backbone.weights={FEATURES}",
                                                  "input.pixel_std=[0.5,0.5,0.5]"]))
    assert mine.input.pixel_std == [0.5, 0.5, 0.5] and mine.input.pixel_mean == pytest.approx([0.48235, 0.45882,
                                                                                                0.40784])
    assert "win over the normalisation" in capsys.readouterr().out
    head = build_vgg_fc_head(weights=FEATURES)  # the fake file has no classifier: loading one would fail
    assert "fc6/fc7 start from random weights" in capsys.readouterr().out
    assert all(torch.isfinite(p).all() for p in head.parameters()) and hub.calls == []


@pytest.fixture(scope="module")
def torchvision_coco(weight_files, tmp_path_factory):
    """torchvision's fasterrcnn_resnet50_fpn(weights=COCO_V1), loaded by its own builder from a filled cache."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    home = tmp_path_factory.mktemp("torch_home")
    url = get_weight(COCO).url
    (home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copyfile(weight_files[url], home / "hub" / "checkpoints" / Path(url).name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        return fasterrcnn_resnet50_fpn(weights=COCO), home


def _tv_key(key: str) -> str:
    return key.replace("rpn.head.conv.", "rpn.head.conv.0.0.")


def test_coco_detector_from_a_name_equals_torchvisions_and_takes_its_settings(torchvision_coco, monkeypatch, capsys):
    theirs, home = torchvision_coco
    monkeypatch.setenv("TORCH_HOME", str(home))
    cfg = load_config(COCO_TO_VOC, ["model.num_classes=90", "model.roi_heads.aligned=true"])
    with pytest.raises(DetkitError, match=r"model.roi_heads.aligned=True .*needs False"):
        build_model(cfg)
    ours = build_model(load_config(R18_FPN.replace("faster_rcnn_r18_fpn", "faster_rcnn_r50"),
                                   ["model.num_classes=90", f"model.weights={COCO}"]))
    assert "set model.roi_heads.aligned=False" in capsys.readouterr().out  # a default, set to torchvision's
    tv_state = theirs.state_dict()
    own = {k: v for k, v in ours.state_dict().items() if _counts(k)}
    assert len(own) == len(tv_state) and all(torch.equal(v, tv_state[_tv_key(k)]) for k, v in own.items())
    assert ours.roi_heads.pooler.aligned is False
    eps = {m.eps for m in ours.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert eps == {m.eps for m in theirs.modules() if isinstance(m, FrozenBatchNorm2d)} == {0.0}
    trainable = {_tv_key(n) for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in theirs.named_parameters() if p.requires_grad}


def test_another_class_count_reinitialises_only_the_class_dependent_layers(torchvision_coco, monkeypatch, capsys):
    theirs, home = torchvision_coco
    monkeypatch.setenv("TORCH_HOME", str(home))
    ours = build_model(load_config(COCO_TO_VOC, ["model.num_classes=3"]))
    predictor = {"roi_heads.box_predictor." + k for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight",
                                                          "bbox_pred.bias")}
    out = capsys.readouterr().out
    assert "another class count" in out and all(k in out for k in predictor)
    tv_state = theirs.state_dict()
    own = {k: v for k, v in ours.state_dict().items() if _counts(k)}
    assert ours.roi_heads.box_predictor.cls_score.weight.shape == (4, 1024)
    assert all(torch.equal(v, tv_state[_tv_key(k)]) for k, v in own.items() if k not in predictor)


def test_a_torchvision_state_dict_file_loads_and_needs_its_pooler(tmp_path):
    source = build_model(_r18("model.backbone.norm=frozen_bn"))
    torch.save({_tv_key(k): v for k, v in source.state_dict().items()}, tmp_path / "tv.pth")
    with pytest.raises(DetkitError, match="set model.roi_heads.aligned=false"):
        build_model(_r18(f"model.weights={tmp_path / 'tv.pth'}"))
    model = build_model(_r18(f"model.weights={tmp_path / 'tv.pth'}", "model.roi_heads.aligned=false"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())


def test_rcnn_svms_and_regressors_are_class_dependent(tmp_path):
    rcnn = ["model.arch=rcnn", "model.backbone.fpn=false", "model.rcnn.warp_size=64", "model.rcnn.context_pad=4",
            "data.train.proposals=p", "data.test.proposals=p"]
    source = build_model(load_config(overrides=[*rcnn, "model.backbone.name=resnet18", "model.num_classes=4"]))
    torch.save({"model": source.state_dict()}, tmp_path / "last.pth")
    target = build_model(load_config(overrides=[*rcnn, "model.backbone.name=resnet18", "model.num_classes=3"]),
                         init_weights=False)
    fresh = load_detector_weights(target, str(tmp_path / "last.pth"))
    assert {k.rsplit(".", 1)[-1] for k in fresh} == {"svm_weight", "svm_bias", "reg_weight", "reg_bias", "weight",
                                                     "bias"}
    assert all(k.startswith("roi_heads.box_predictor.") for k in fresh)
    same = {k: v for k, v in target.state_dict().items() if k not in fresh and _counts(k)}
    assert same and all(torch.equal(v, source.state_dict()[k]) for k, v in same.items())


def test_detectors_detkit_cannot_build_are_refused_naming_the_one_that_fits():
    for name in ("FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1", "RetinaNet_ResNet50_FPN_Weights.COCO_V1"):
        with pytest.raises(DetkitError, match="only FasterRCNN_ResNet50_FPN_Weights.COCO_V1 has detkit's layout"):
            build_model(_r18(f"model.weights={name}"))
    with pytest.raises(DetkitError, match="use it as model.backbone.weights"):
        build_model(_r18(f"model.weights={R18}"))
    with pytest.raises(DetkitError, match=r"model.backbone.name=resnet18 \(in .*\) \(needs resnet50\)"):
        build_model(_r18(f"model.weights={COCO}"))


def test_defaults_follow_the_weights_and_alternating_step_2_starts_fresh_from_model_weights():
    from detkit.recipes.alternating import step2_starts_from_step1

    start = resolved_config(_r18("model.weights=some/model_final.pth"))
    assert (start.model.backbone.norm, start.model.backbone.trainable_layers) == ("frozen_bn", 3)
    scratch = resolved_config(_r18())
    assert (scratch.model.backbone.norm, scratch.model.backbone.trainable_layers) == ("bn", 5)
    chosen = resolved_config(_r18("model.weights=some/model_final.pth", "model.backbone.norm=bn",
                                  "model.backbone.trainable_layers=5"))
    assert (chosen.model.backbone.norm, chosen.model.backbone.trainable_layers) == ("bn", 5)
    assert step2_starts_from_step1(_r18())
    assert not step2_starts_from_step1(_r18("model.weights=some/model_final.pth"))
    with pytest.raises(DetkitError, match="set one of model.weights"):
        resolved_config(_r18("model.weights=a.pth", f"model.backbone.weights={R18}"))


RECIPES = {
    "faster_rcnn_r50_fpn_coco_to_voc.yaml": [],
    "faster_rcnn_r50_fpn_coco_to_coco.yaml": [],
    "faster_rcnn_r50_fpn_imagenet.yaml": [],
    # torchvision's VGG16 IMAGENET1K_V1 file is 528 MB (its classifier alone 470 MB): faked here by the features-only
    # weights, whose fc6/fc7 start random; the build and the training step are the same otherwise
    "fast_rcnn_vgg16_imagenet.yaml": [f"model.backbone.weights={FEATURES}", "model.roi_heads.batch_size_per_image=8"],
    "rcnn_vgg16_imagenet.yaml": [f"model.backbone.weights={FEATURES}", "model.roi_heads.batch_size_per_image=4"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_finetune_recipes_build_from_their_weights_and_train_one_iteration(recipe, hub):
    from detkit.engine.solver import build_optimizer

    cfg = load_config(REPO / "configs" / "finetune" / recipe, ["model.num_classes=2", "input.min_size=96",
                                                              "input.max_size=96", *RECIPES[recipe]])
    model = build_model(cfg).train()
    assert len(hub.calls) == 1  # its weights, from the (fake) download
    image = torch.rand(3, 96, 96)
    target = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])}
    if cfg.model.arch != "faster_rcnn":  # proposals travel with the data
        target["proposals"] = torch.tensor([[8.0, 10.0, 62.0, 66.0], [0.0, 0.0, 40.0, 40.0], [30, 30, 90, 90.0]])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, base_lr=0.001, momentum=0.9, weight_decay=1e-4)
    losses = model([image], [target])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(p.requires_grad for n, p in model.named_parameters() if n in changed)
