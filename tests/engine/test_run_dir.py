"""Output-folder guards and the resume config check (detkit.engine.run_dir)."""
import json

import pytest
from torch import nn

from detkit.config import config_to_dict, load_config
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.run_dir import (check_not_a_run, check_resume_config, config_changes, make_output_dir, prepare_output_dir,
                                   record_config_changes, release_output_dir)
from detkit.errors import DetkitError


def test_an_output_dir_that_is_a_file_or_lies_under_one_is_one_error_naming_it(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(DetkitError, match=r"output_dir .*taken is a file, not a folder"):
        make_output_dir(tmp_path / "taken")
    with pytest.raises(DetkitError, match=r"lies under .*taken, which is a file"):
        prepare_output_dir(tmp_path / "taken" / "run", resume=False, overwrite=False)
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"iter": 4}\n')
    (tmp_path / "last.pth").write_bytes(b"iteration 4")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DetkitError, match=r"already holds a run.*--resume.*--overwrite"):
        prepare_output_dir(tmp_path, resume=False, overwrite=False)
    assert (tmp_path / "last.pth").read_bytes() == b"iteration 4"  # nothing touched on refusal
    assert prepare_output_dir(tmp_path, resume=True, overwrite=False) == tmp_path
    assert (tmp_path / "last.pth").read_bytes() == b"iteration 4"
    with pytest.raises(DetkitError, match="contradict"):
        prepare_output_dir(tmp_path, resume=True, overwrite=True)
    prepare_output_dir(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.txt"]  # run files gone, user's file kept
    prepare_output_dir(tmp_path / "new", resume=False, overwrite=False)
    assert (tmp_path / "new").is_dir()


PINNED = ["solver.base_lr=0.02", "solver.batch_size=8", "model.roi_heads.representation_size=256"]


def write_run(folder, cfg):
    save_checkpoint(folder / "last.pth", model=nn.Linear(2, 2), iteration=4, config=config_to_dict(cfg))


def test_resume_refuses_a_model_change_naming_the_keys_and_writes_nothing(tmp_path):
    cfg = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", *PINNED])
    write_run(tmp_path, cfg)
    overrides = ["solver.base_lr=0.001", "model.roi_heads.representation_size=64", "model.backbone.name=resnet34"]
    changed = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", *PINNED, *overrides])
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DetkitError) as info:
        check_resume_config(tmp_path, config_to_dict(changed))
    message = str(info.value)
    assert "model.backbone.name" in message and "model.roi_heads.representation_size (256 -> 64)" in message
    assert "iteration 4" in message and "solver.base_lr" not in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resume_warns_about_and_records_a_change_it_honours(tmp_path, caplog):
    cfg = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", *PINNED])
    write_run(tmp_path, cfg)
    assert check_resume_config(tmp_path, config_to_dict(cfg)) == {}
    moved = load_config("configs/demo.yaml", [f"output_dir={tmp_path / 'moved'}", *PINNED, "solver.base_lr=0.0001",
                                              "solver.batch_size=3"])
    with caplog.at_level("WARNING", logger="detkit.engine.run_dir"):
        changes = check_resume_config(tmp_path, config_to_dict(moved))
    assert changes == {"solver.base_lr": (0.02, 0.0001), "solver.batch_size": (8, 3)}  # output_dir: no warning
    assert "solver.base_lr changes from 0.02 to 0.0001; used from iteration 4 on" in caplog.text
    record_config_changes(tmp_path, changes)
    lines = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert lines == [{"iteration": 4, "changes": {"solver.base_lr": [0.02, 0.0001], "solver.batch_size": [8, 3]}}]


def test_config_changes_compares_nested_keys():
    assert config_changes({"a": {"b": 1, "c": [1, 2]}, "d": 0}, {"a": {"b": 2, "c": (1, 2)}, "d": 0}) == {
        "a.b": (1, 2)}


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    prepare_output_dir(tmp_path, resume=False, overwrite=False)  # this process now holds the folder's lock
    other = subprocess.run([sys.executable, "-c", "import sys; from detkit.engine.run_dir import prepare_output_dir; "
                            "prepare_output_dir(sys.argv[1], resume=True, overwrite=False)", str(tmp_path)],
                           capture_output=True, text=True, env=env)
    assert other.returncode != 0 and "another process is training in" in other.stderr
    prepare_output_dir(tmp_path, resume=True, overwrite=False)  # the holder itself may go on
    release_output_dir(tmp_path)
    again = subprocess.run(other.args, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr


def test_evaluation_and_inference_outputs_stay_out_of_a_training_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(DetkitError, match=r"--out .* holds a training run.*e.g. --out .*eval"):
        check_not_a_run(tmp_path, "--out")
    assert check_not_a_run(tmp_path / "eval", "--out") == tmp_path / "eval"


def test_resume_removes_the_temporary_files_of_the_one_atomic_writer(tmp_path):
    from detkit.atomic import temp_path
    from detkit.engine.run_dir import remove_stale_temporaries

    left = [temp_path(tmp_path / name) for name in ("last.pth", "config.yaml", "metrics.json", "config_changes.jsonl")]
    for path in left:
        path.write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("mine")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(left)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.tmp"]


def test_a_run_from_before_the_automatic_defaults_resumes_with_its_config(tmp_path):
    """norm: auto, trainable_layers / pixel_mean / pixel_std: null resolve to what such a run stored (bn, 5, ImageNet)."""
    from detkit.config import config_to_dict
    from detkit.modeling.build.weights import resolved_config

    current = config_to_dict(resolved_config(load_config("configs/demo.yaml")))
    stored = json.loads(json.dumps(current))
    stored["model"]["backbone"].update(norm="bn", trainable_layers=5)
    stored["input"].update(pixel_mean=[0.485, 0.456, 0.406], pixel_std=[0.229, 0.224, 0.225])
    assert config_changes(stored, current) == {}


def test_inference_refuses_an_evaluation_folder_and_points_beside_it(tmp_path):
    """infer.py into eval.py's folder would replace its detections.json and config.yaml with its own."""
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "eval" / "metrics.json").write_text("{}")
    with pytest.raises(DetkitError, match=r"holds a training run.* e\.g\. --out .*run/infer$"):
        check_not_a_run(run, "--out", tool="infer")
    with pytest.raises(DetkitError, match=r"holds an evaluation \(metrics\.json\).* e\.g\. --out .*run/infer$"):
        check_not_a_run(run / "eval", "--out", tool="infer")
    assert check_not_a_run(run / "eval", "--out") == run / "eval"  # eval.py may write its own folder again
    assert (run / "eval" / "metrics.json").read_text() == "{}"
