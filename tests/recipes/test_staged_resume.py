"""--resume of a staged run (R-CNN's stages, alternating's steps) compares the config with the one the run started
with before anything is written (issue 21 item 1): a change a finished stage read is refused naming the key and the
stage, a model change under saved weights is refused naming the key, any other change is warned about, recorded
and applied; config.yaml and config_changes.jsonl stay byte-equal on refusal.

No training: the run folders are made by hand (config.yaml, stage_done.json, a last.pth) and the work after the
check is stubbed, so every test takes well under a second."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from detkit import recipes
from detkit.config import config_to_dict, load_config, save_config
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.run_dir import CHANGES_FILE, StageReads, check_resume, release_output_dir
from detkit.engine.stages import DONE_FILE
from detkit.errors import DetkitError
from detkit.recipes import common
from detkit.recipes.alternating import ALTERNATING_STEPS
from detkit.recipes.alternating import STAGE_READS as ALT_READS
from detkit.recipes.rcnn import schedule as rcnn
from tests.recipes.test_alternating import ALT
from tests.test_tools_no_lost_work import DEMO, REPO

RCNN = str(REPO / "configs" / "rcnn_r18.yaml")
EARLIER = '{"iteration": 3, "changes": {"solver.base_lr": [0.1, 0.02]}}\n'


class Reached(Exception):
    """The run got past the resume check to the work after it (stubbed)."""


@pytest.fixture(autouse=True)
def no_work_after_the_check(monkeypatch):
    """Building the data and running stages are stubbed: the data step must come after the check, and a test that
    gets to the stages stops there (after config.yaml and config_changes.jsonl were written)."""
    built = []

    def build(cfg, progress=True):
        built.append(cfg.output_dir)
        return None, None

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(common, "build_train_and_test", build)
    monkeypatch.setattr(rcnn, "run_stages", stop)
    import detkit.recipes.alternating as alternating

    monkeypatch.setattr(alternating, "train_alternating", stop)
    yield built


def make_run(out: Path, cfg, done: tuple[str, ...], started: str | None = None) -> dict[str, bytes]:
    """A run folder as a run of `cfg` leaves it: config.yaml, an earlier config_changes.jsonl line, the `done`
    stages' markers and, for `started`, a last.pth at iteration 2; returns the two files' bytes. A run stores its
    config with the automatic values resolved (detkit.recipes.train), so the folder holds that one too."""
    from detkit.modeling.build.weights import resolved_config

    cfg = resolved_config(cfg)
    out.mkdir(parents=True)
    save_config(cfg, out / "config.yaml")
    (out / CHANGES_FILE).write_text(EARLIER)
    for name in done:
        (out / name).mkdir()
        (out / name / DONE_FILE).write_text("{}")
    if started:
        (out / started).mkdir()
        save_checkpoint(out / started / "last.pth", model=nn.Linear(2, 2), iteration=2, config=config_to_dict(cfg))
    return files(out)


def files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("config.yaml", CHANGES_FILE)}


def resume(cfg) -> None:
    try:
        recipes.train(cfg, resume=True, progress=False)
    finally:
        release_output_dir(cfg.output_dir)


def rcnn_config(out: Path, *overrides: str):
    return load_config(RCNN, [f"output_dir={out}", "model.class_names=[cell]", "device=cpu", *overrides])


def alt_config(out: Path, *overrides: str):
    return load_config(DEMO, [f"output_dir={out}", *ALT, "model.class_names=[cell]", "device=cpu", *overrides])


def refused(cfg, before: dict[str, bytes], built: list) -> str:
    with pytest.raises(DetkitError) as error:
        resume(cfg)
    out = Path(cfg.output_dir)
    assert files(out) == before  # config.yaml and config_changes.jsonl byte-equal
    assert built == []  # refused before the data (and its proposal stores) was touched
    assert "\n" not in str(error.value)
    return str(error.value)


def test_rcnn_svm_c_after_the_svms_are_fitted_is_refused_naming_the_key_and_the_stage(tmp_path,
                                                                                      no_work_after_the_check):
    out = tmp_path / "run"
    before = make_run(out, rcnn_config(out), done=rcnn.STAGES)  # a finished run
    message = refused(rcnn_config(out, "model.rcnn.svm_C=1.0"), before, no_work_after_the_check)
    assert "model.rcnn.svm_C (0.001 -> 1.0) was read by the finished stage(s) 4_svms" in message
    assert f"delete {out / '4_svms'})" in message  # 5_bbox_reg is not built from the SVMs: it stays


def test_rcnn_svm_c_before_the_svms_is_warned_recorded_and_applied(tmp_path, caplog, no_work_after_the_check):
    out = tmp_path / "run"
    make_run(out, rcnn_config(out), done=rcnn.STAGES[:3])
    with caplog.at_level("WARNING", logger="detkit.engine.run_dir"), pytest.raises(Reached):
        resume(rcnn_config(out, "model.rcnn.svm_C=1.0"))
    assert "model.rcnn.svm_C changes from 0.001 to 1.0; used from stage 4_svms on" in caplog.text
    lines = (out / CHANGES_FILE).read_text().splitlines()
    assert lines[0] + "\n" == EARLIER
    assert json.loads(lines[1]) == {"iteration": 0, "stage": "4_svms", "changes": {"model.rcnn.svm_C": [0.001, 1.0]}}
    assert load_config(out / "config.yaml").model.rcnn.svm_C == 1.0


def test_rcnn_svms_half_fitted_cannot_take_another_c(tmp_path, no_work_after_the_check):
    out = tmp_path / "run"
    before = make_run(out, rcnn_config(out), done=rcnn.STAGES[:3])
    (out / "4_svms").mkdir()
    (out / "4_svms" / "class_1.npz").write_bytes(b"fitted with the old C")
    message = refused(rcnn_config(out, "model.rcnn.svm_C=1.0"), before, no_work_after_the_check)
    assert "model.rcnn.svm_C (0.001 -> 1.0) was read by the finished stage(s) 4_svms" in message


def test_rcnn_warp_size_is_refused_naming_the_key_before_any_weight_is_loaded(tmp_path, no_work_after_the_check):
    out = tmp_path / "run"
    before = make_run(out, rcnn_config(out), done=rcnn.STAGES[:1], started="2_finetune")  # fine-tuning stopped
    message = refused(rcnn_config(out, "model.rcnn.warp_size=48"), before, no_work_after_the_check)
    assert message.startswith(f"--resume cannot change the model of {out / '2_finetune' / 'last.pth'} "
                              "(iteration 2): model.rcnn.warp_size (32 -> 48)")

    done = tmp_path / "done"  # fine-tuned and features cached: both read the warp size, features are built on it
    before = make_run(done, rcnn_config(done), done=rcnn.STAGES)
    message = refused(rcnn_config(done, "model.rcnn.warp_size=48"), before, no_work_after_the_check)
    assert "model.rcnn.warp_size (32 -> 48) was read by the finished stage(s) 2_finetune, 3_features" in message
    assert ", ".join(str(done / s) for s in rcnn.STAGES[1:]) in message  # and every stage built on them


def test_rcnn_solver_change_applies_to_fine_tuning_in_progress(tmp_path, no_work_after_the_check):
    out = tmp_path / "run"
    make_run(out, rcnn_config(out), done=rcnn.STAGES[:1], started="2_finetune")
    with pytest.raises(Reached):
        resume(rcnn_config(out, "solver.base_lr=0.01", "model.rcnn.score_thresh=-0.5"))
    line = json.loads((out / CHANGES_FILE).read_text().splitlines()[1])
    assert line == {"iteration": 2, "stage": "2_finetune",
                    "changes": {"model.rcnn.score_thresh": [-1.0, -0.5], "solver.base_lr": [0.02, 0.01]}}


def test_a_finished_stage_built_on_a_deleted_one_is_refused(tmp_path, no_work_after_the_check):
    out = tmp_path / "run"
    before = make_run(out, rcnn_config(out), done=(rcnn.STAGES[0], *rcnn.STAGES[2:]))  # 2_finetune deleted
    message = refused(rcnn_config(out), before, no_work_after_the_check)
    assert "3_features is finished but 2_finetune it was built from is not finished" in message
    partial = tmp_path / "partial"  # features half cached, then fine-tuning deleted
    before = make_run(partial, rcnn_config(partial), done=rcnn.STAGES[:1], started="3_features")
    message = refused(rcnn_config(partial), before, no_work_after_the_check)
    assert "3_features is started but 2_finetune it was built from is not finished" in message


def test_alternating_iter_fractions_of_a_finished_step_are_refused(tmp_path, no_work_after_the_check):
    out = tmp_path / "run"
    before = make_run(out, alt_config(out), done=ALTERNATING_STEPS[:3], started="3_rpn")  # stopped in step 3
    message = refused(alt_config(out, "train.alternating.iter_fractions=[0.3,0.1,0.5,0.2]"), before,
                      no_work_after_the_check)
    assert "train.alternating.iter_fractions ([0.2, 0.1, 0.5, 0.2] -> [0.3, 0.1, 0.5, 0.2]) was read by the " \
           "finished stage(s) 1_rpn" in message
    assert f"delete {', '.join(str(out / s) for s in ALTERNATING_STEPS[:3])}" in message
    message = refused(alt_config(out, "solver.max_iter=20"), before, no_work_after_the_check)  # every step's length
    assert "solver.max_iter (10 -> 20) was read by the finished stage(s) 1_rpn, 2_fast_rcnn," in message


def test_alternating_iter_fractions_of_the_steps_left_are_recorded_and_applied(tmp_path, caplog,
                                                                               no_work_after_the_check):
    out = tmp_path / "run"
    make_run(out, alt_config(out), done=ALTERNATING_STEPS[:3], started="3_rpn")
    changed = alt_config(out, "train.alternating.iter_fractions=[0.2,0.1,0.4,0.3]")
    with caplog.at_level("WARNING", logger="detkit.engine.run_dir"), pytest.raises(Reached):
        resume(changed)
    assert "train.alternating.iter_fractions changes from [0.2, 0.1, 0.5, 0.2] to [0.2, 0.1, 0.4, 0.3]; used " \
           "from stage 3_rpn (iteration 2) on" in caplog.text
    line = json.loads((out / CHANGES_FILE).read_text().splitlines()[1])
    assert line == {"iteration": 2, "stage": "3_rpn", "changes": {
        "train.alternating.iter_fractions": [[0.2, 0.1, 0.5, 0.2], [0.2, 0.1, 0.4, 0.3]]}}
    assert load_config(out / "config.yaml").train.alternating.iter_fractions == [0.2, 0.1, 0.4, 0.3]


def test_alternating_model_change_in_a_stopped_step_is_refused(tmp_path, no_work_after_the_check):
    out = tmp_path / "run"
    before = make_run(out, alt_config(out), done=ALTERNATING_STEPS[:3], started="3_rpn")
    message = refused(alt_config(out, "model.rpn.nms_thresh=0.6"), before, no_work_after_the_check)
    assert "model.rpn.nms_thresh (0.7 -> 0.6) was read by the finished stage(s) 1_rpn, 1_proposals, 2_fast_rcnn" \
        in message
    assert f"{out / '3_rpn'})" in message  # the step in progress is built on them too


def test_every_stage_of_every_staged_recipe_declares_what_it_reads():
    assert tuple(s.name for s in rcnn.STAGE_READS) == rcnn.STAGES
    assert tuple(s.name for s in ALT_READS) == ALTERNATING_STEPS
    for stages in (rcnn.STAGE_READS, ALT_READS):
        names = [s.name for s in stages]
        for i, stage in enumerate(stages):
            assert stage.reads and set(stage.after) <= set(names[:i])  # built only on earlier stages


def test_element_reads_only_see_their_own_element():
    step3 = StageReads("3_rpn", ("train.alternating.iter_fractions[2]",))
    key = "train.alternating.iter_fractions"
    assert not step3.reads_change(key, [0.2, 0.1, 0.5, 0.2], [0.3, 0.1, 0.5, 0.2])
    assert step3.reads_change(key, [0.2, 0.1, 0.5, 0.2], [0.2, 0.1, 0.4, 0.2])
    assert step3.reads_change(key, [0.5, 0.5], [0.2, 0.1, 0.5, 0.2])  # another length moves every element
    assert StageReads("x", ("solver",), ("solver.log_period",)).reads_change("solver.base_lr", 1, 2)
    assert not StageReads("x", ("solver",), ("solver.log_period",)).reads_change("solver.log_period", 1, 2)
    assert not StageReads("x", ("solver",)).reads_change("solverx.y", 1, 2)


def test_joint_reads_the_run_config_yaml_too(tmp_path):
    """The joint recipe's check is the same function: its config.yaml is compared even before any last.pth."""
    from detkit.modeling.build.weights import resolved_config

    out = tmp_path / "run"
    cfg = load_config(DEMO, [f"output_dir={out}", "model.class_names=[cell]"])
    make_run(out, cfg, done=())
    changed = config_to_dict(resolved_config(load_config(DEMO, [f"output_dir={out}", "model.class_names=[cell]",
                                                                "solver.base_lr=0.5"])))
    assert check_resume(out, changed, common.ONE_FOLDER_READS) == {"solver.base_lr": (cfg.solver.base_lr, 0.5)}
    save_checkpoint(out / "last.pth", model=nn.Linear(2, 2), iteration=4, config=config_to_dict(cfg))
    changed["model"]["backbone"]["name"] = "resnet34"
    with pytest.raises(DetkitError, match=r"cannot change the model of .*last.pth \(iteration 4\): "
                                          r"model.backbone.name"):
        check_resume(out, changed, common.ONE_FOLDER_READS)
    assert torch.load(out / "last.pth", weights_only=True)["iteration"] == 4


@pytest.mark.parametrize("recipe,override,stages", [
    ("rcnn", "model.rcnn.features_per_image=10", "3_features"),
    ("rcnn", "model.rcnn.reg_alpha=10.0", "5_bbox_reg"),
    ("rcnn", "model.rcnn.feature_norm=10.0", "4_svms, 5_bbox_reg"),
    ("rcnn", "proposals.top_k=100", "1_proposals, 2_finetune, 3_features"),
    ("rcnn", "solver.base_lr=0.5", "2_finetune"),
    ("alternating", "train.alternating.lr_factors=[1.0,0.5,1.0,1.0]", "2_fast_rcnn"),
    ("alternating", "train.alternating.step2_backbone=fresh", "2_fast_rcnn"),
    ("alternating", "input.min_size=96", "1_rpn, 1_proposals, 2_fast_rcnn, 3_rpn, 4_fast_rcnn"),
])
def test_other_keys_a_finished_stage_read_are_refused_naming_it(tmp_path, no_work_after_the_check, recipe, override,
                                                                stages):
    out = tmp_path / "run"
    make = rcnn_config if recipe == "rcnn" else alt_config
    names = rcnn.STAGES if recipe == "rcnn" else ALTERNATING_STEPS
    before = make_run(out, make(out), done=names)
    message = refused(make(out, override), before, no_work_after_the_check)
    assert f"{override.split('=')[0]} (" in message and f"finished stage(s) {stages}, which" in message


@pytest.mark.parametrize("override", ["model.rcnn.nms_thresh=0.4", "test.amp=off", "solver.log_period=7"])
def test_keys_no_stage_reads_are_applied_to_a_finished_rcnn_run(tmp_path, no_work_after_the_check, override):
    out = tmp_path / "run"
    make_run(out, rcnn_config(out), done=rcnn.STAGES)
    with pytest.raises(Reached):
        resume(rcnn_config(out, override))
    line = json.loads((out / CHANGES_FILE).read_text().splitlines()[1])
    assert list(line["changes"]) == [override.split("=")[0]] and line["stage"] is None
