"""Training schedules (issue 12): alternating steps freeze what the paper freezes, the result is one Faster R-CNN,
exact joint training sends the detector's gradient into the RPN's box regression, and both resume exactly.

Tiny: resnet18 FPN at 64 px on 8 generated 64x64 VOC images, a few iterations per step."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detkit.config import load_config
from detkit.engine.checkpoint import read_class_meta
from detkit.errors import DetkitError
from detkit.modeling.build import build_model
from tests.test_tools_no_lost_work import DEMO, REPO, TINY, tiny_voc

ALT = ["train.schedule=alternating", "solver.max_iter=10", "train.alternating.iter_fractions=[0.2,0.1,0.5,0.2]"]


def voc_args(data: Path) -> list[str]:
    return ["data.train.format=voc", "data.test.format=voc", f"data.root={data}", "data.train.split=trainval",
            "data.test.split=test", "solver.checkpoint_period=100", *TINY]


def state(path: Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return loaded["model"]


def part(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.startswith(prefix)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def alternating_run(tmp_path_factory):
    """A tiny from-scratch alternating run (steps of 2 / 1 / 5 / 2 iterations, solver.warmup_iters=5); records each
    step's Trainer arguments and the backbone its model starts from in cfg.started."""
    from detkit import recipes
    from detkit.recipes import common

    root = tmp_path_factory.mktemp("alt")
    data = tiny_voc(root / "voc", count=8)
    cfg = load_config(DEMO, [f"output_dir={root / 'run'}", *voc_args(data), *ALT, "solver.warmup_iters=5"])
    started, make_trainer = {}, common.make_trainer

    def recording(cfg, model, train_set, device, folder, **kwargs):
        started[Path(folder).name] = {"backbone": part({k: v.clone() for k, v in model.state_dict().items()},
                                                       "backbone."),
                                      "warmup_iters": kwargs.get("warmup_iters"), "max_iter": kwargs.get("max_iter")}
        return make_trainer(cfg, model, train_set, device, folder, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "make_trainer", recording)
        recipes.train(cfg, progress=False)
    cfg.started = started
    return cfg


def test_alternating_steps_scale_the_warmup_and_step_2_starts_from_step_1s_backbone(alternating_run):
    started, out = alternating_run.started, Path(alternating_run.output_dir)
    assert list(started) == ["1_rpn", "2_fast_rcnn", "3_rpn", "4_fast_rcnn"]
    # solver.warmup_iters=5 of solver.max_iter=10: each step warms up for half its length (rounded to even), not
    # for 5 iterations (which was all of steps 1, 2 and 4)
    assert [started[s]["max_iter"] for s in started] == [2, 1, 5, 2]
    assert [started[s]["warmup_iters"] for s in started] == [1, 0, 2, 1]
    # From scratch (no model.backbone.weights), step_2_backbone=auto copies step 1's trained backbone into step 2
    assert same(started["2_fast_rcnn"]["backbone"], part(state(out / "1_rpn" / "model_final.pth"), "backbone."))
    assert not same(started["1_rpn"]["backbone"], started["2_fast_rcnn"]["backbone"])


def test_step_2_backbone_choice_follows_the_pretrained_weights():
    from detkit.recipes.alternating import step2_starts_from_step1

    def starts_from_step1(*overrides: str) -> bool:
        return step2_starts_from_step1(load_config(DEMO, ["train.schedule=alternating", *overrides]))

    assert starts_from_step1()  # auto, from scratch
    assert not starts_from_step1("model.backbone.weights=/some/imagenet.pth")  # auto: the paper's fresh start
    assert not starts_from_step1("train.alternating.step2_backbone=fresh")
    assert starts_from_step1("train.alternating.step2_backbone=step1", "model.backbone.weights=/some/imagenet.pth")


def test_alternating_steps_3_and_4_train_only_their_own_layers(alternating_run):
    out = Path(alternating_run.output_dir)
    step2, step3, step4 = (state(out / name / "model_final.pth") for name in ("2_fast_rcnn", "3_rpn", "4_fast_rcnn"))
    # Step 3: the step-2 backbone (parameters and batch-norm statistics) and RoI heads stay; the new RPN trains.
    assert same(part(step3, "backbone."), part(step2, "backbone."))
    assert same(part(step3, "roi_heads."), part(step2, "roi_heads."))
    from detkit.recipes.alternating import seed_everything

    seed_everything(alternating_run.seed + 3)  # the RPN step 3 started from
    initial_rpn = part(build_model(alternating_run, 1).state_dict(), "rpn.")
    assert not torch.equal(step3["rpn.head.bbox_pred.weight"], initial_rpn["rpn.head.bbox_pred.weight"])
    assert not torch.equal(step3["rpn.head.conv.weight"], initial_rpn["rpn.head.conv.weight"])
    # Step 4: backbone and RPN stay; the RoI heads train.
    assert same(part(step4, "backbone."), part(step3, "backbone."))
    assert same(part(step4, "rpn."), part(step3, "rpn."))
    assert not torch.equal(step4["roi_heads.box_predictor.cls_score.weight"],
                           step3["roi_heads.box_predictor.cls_score.weight"])
    assert not torch.equal(step4["roi_heads.box_head.fc6.weight"], step3["roi_heads.box_head.fc6.weight"])


def test_alternating_gives_one_faster_rcnn_that_reloads_identically(alternating_run):
    from detkit.data import build_dataset
    from detkit.edge import load_trained

    out = Path(alternating_run.output_dir)
    final = state(out / "model_final.pth")
    plain = build_model(alternating_run, 1).state_dict()  # an ordinary Faster R-CNN: one backbone, one RPN
    assert final.keys() == plain.keys()
    assert same(final, state(out / "4_fast_rcnn" / "model_final.pth"))
    assert read_class_meta(out / "model_final.pth")["class_names"] == ["block"]
    cfg = load_config(out / "config.yaml", ["model.class_names=null", "model.category_ids=null"])
    d = cfg.data.test
    images = [build_dataset(d.format, cfg.data.root, d.split, None, train=False)[i][0] for i in range(3)]
    first, second = load_trained(cfg, out / "model_final.pth"), load_trained(cfg, out / "model_final.pth")
    with torch.no_grad():
        for a, b in zip(first(images), second(images)):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "metrics.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())  # the final RPN's recall, as for every schedule
    assert all(0.0 <= metrics[f"rpn/AR@{n}"] <= 1.0 for n in (100, 300, 1000))


def rpn_box_gradient(schedule: str, backbone: list[str], *extra: str) -> torch.Tensor | None:
    """The gradient of the RoI heads' losses on the RPN's box-regression weights (a seeded tiny model and batch)."""
    return rpn_box_gradient_and_losses(schedule, backbone, *extra)[0]


def rpn_box_gradient_and_losses(schedule: str, backbone: list[str], *extra: str
                                ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    cfg = load_config(DEMO, [*TINY, *backbone, f"train.schedule={schedule}", "model.rpn.post_nms_top_n_train=50",
                             *extra])
    torch.manual_seed(0)
    model = build_model(cfg, 2).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    torch.manual_seed(1)
    losses = model(images, targets)
    head_loss = losses["loss_classifier"] + losses["loss_box_reg"]
    grad = torch.autograd.grad(head_loss, model.rpn.head.bbox_pred.weight, allow_unused=True)[0]
    return grad, {k: v.detach() for k, v in losses.items()}


@pytest.mark.parametrize("backbone", [[], ["model.backbone.fpn=false", "model.rpn.anchor_sizes=[[16,32,64]]"]],
                         ids=["r18_fpn", "r18_c4"])
def test_only_exact_joint_sends_the_detector_loss_into_the_rpn_box_regression(backbone):
    joint = rpn_box_gradient("joint", backbone)
    assert joint is None or joint.abs().sum() == 0
    exact = rpn_box_gradient("exact_joint", backbone)
    assert exact is not None and exact.abs().sum() > 0


def test_exact_joint_weighs_the_box_gradient_without_changing_the_forward():
    """train.exact_joint.proposal_grad_scale multiplies the detector's gradient into the RPN's box regression and
    nothing else: the losses are bit-identical and the gradient is exactly proportional to the weight."""
    one, losses_one = rpn_box_gradient_and_losses("exact_joint", [], "train.exact_joint.proposal_grad_scale=1.0")
    tenth, losses_tenth = rpn_box_gradient_and_losses("exact_joint", [], "train.exact_joint.proposal_grad_scale=0.1")
    assert losses_one.keys() == losses_tenth.keys()
    assert all(torch.equal(losses_one[k], losses_tenth[k]) for k in losses_one)
    assert one.abs().sum() > 0
    torch.testing.assert_close(tenth, 0.1 * one, rtol=1e-4, atol=1e-9)
    with pytest.raises(DetkitError, match="train.exact_joint.proposal_grad_scale.*positive"):
        build_model(load_config(DEMO, ["train.schedule=exact_joint", "train.exact_joint.proposal_grad_scale=0"]), 2)


def test_schedules_that_do_not_fit_the_model_are_config_errors():
    with pytest.raises(DetkitError, match="train.schedule.*exact_joint.*model.roi_heads.pooler.*roi_pool"):
        build_model(load_config(DEMO, ["train.schedule=exact_joint", "model.roi_heads.pooler=roi_pool"]), 2)
    with pytest.raises(DetkitError, match="train.alternating.iter_fractions"):
        build_model(load_config(DEMO, ["train.schedule=alternating", "train.alternating.iter_fractions=[1,1]"]), 2)
    with pytest.raises(DetkitError, match="needs an RPN"):  # refused when the config is loaded
        load_config(DEMO, ["train.schedule=alternating", "model.arch=fast_rcnn"])


def train_tool(out: Path, args: list[str], *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), DEMO, f"output_dir={out}", *args,
                             "--no-progress", *extra], cwd=out.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


@pytest.mark.parametrize("schedule,step", [
    ([*ALT, "solver.warmup_iters=5"], "3_rpn"),  # alternating_run's recipe: that run is the straight one
    (["train.schedule=exact_joint", "solver.max_iter=6"], "."),
])
def test_a_run_stopped_mid_step_resumes_to_the_same_weights(tmp_path, request, schedule, step):
    data = tiny_voc(tmp_path / "voc", count=8)
    args = [*voc_args(data), *schedule, "test.report=false"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    alternating = step != "."
    reference = None if alternating else train_tool(whole, args)
    proc = train_tool(stopped, args)
    log, deadline = stopped / step / "metrics.jsonl", time.monotonic() + 300
    while proc.poll() is None and not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 143, stderr[-3000:]
    assert not (stopped / step / "model_final.pth").exists() and (stopped / step / "last.pth").exists()
    finish(train_tool(stopped, args, "--resume"))
    if alternating:
        whole = Path(request.getfixturevalue("alternating_run").output_dir)
    else:
        finish(reference)
    a, b = state(whole / "model_final.pth"), state(stopped / "model_final.pth")
    assert a.keys() == b.keys()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()) <= 1e-5


def test_box_regression_targets_come_from_detached_proposals():
    cfg = load_config(DEMO, [*TINY, "train.schedule=exact_joint"])
    heads = build_model(cfg, 2).roi_heads
    proposals = [torch.tensor([[8.0, 10.0, 38.0, 48.0], [0.0, 0.0, 20.0, 20.0]], requires_grad=True)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    sampled, labels, regression_targets = heads.sample_proposals(proposals, targets)
    assert sampled[0].requires_grad and not regression_targets.requires_grad  # pooled from, not pulled by, the target
    assert (labels > 0).any()


def test_step_2_missing_proposals_say_that_the_proposals_stage_refills_them(tmp_path, monkeypatch):
    """Issue 21 item 5: step 2's store is filled by the run itself (from step 1's RPN), not by tools/propose.py."""
    from detkit.data.voc import VOCDataset
    from detkit.recipes import alternating as schedules

    cfg = load_config(DEMO, [f"output_dir={tmp_path / 'run'}", *TINY, *ALT, "model.class_names=[cell]"])
    seen = []
    monkeypatch.setattr(schedules, "load_model_weights", lambda *a, **k: None)
    monkeypatch.setattr(schedules, "fit", lambda cfg, model, train_set, *a, **k: seen.append(train_set) or {})
    stages = {s.name: s for s in schedules.alternating_stages(
        cfg, VOCDataset(tiny_voc(tmp_path / "voc", count=2), "trainval"), torch.device("cpu"), progress=False)}
    stages["2_fast_rcnn"].run(tmp_path / "run" / "2_fast_rcnn", False)
    with pytest.raises(DetkitError) as error:
        seen[0][0]
    done = tmp_path / "run" / "1_proposals" / "stage_done.json"
    assert str(error.value) == (f"proposal store {tmp_path / 'run' / '1_proposals' / 'train'} has no proposals for "
                                f"image id 1; delete {done} and rerun train.py with --resume to fill it again from "
                                f"step 1's RPN")
    assert "propose.py" not in str(error.value)
