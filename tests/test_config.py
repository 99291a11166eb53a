import pytest
import yaml

from detkit.config import load_config, save_config
from detkit.errors import DetkitError


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "_base_").mkdir()
    write(tmp_path / "_base_" / "a.yaml", {"solver": {"max_iter": 10, "base_lr": 0.1}, "seed": 1})
    write(tmp_path / "_base_" / "b.yaml", {"solver": {"max_iter": 20}, "input": {"min_size": 320}})
    cfg_path = write(tmp_path / "run.yaml", {"_base_": ["_base_/a.yaml", "_base_/b.yaml"], "seed": 3})
    cfg = load_config(cfg_path, ["solver.batch_size=2", "input.min_size=[256, 288]"])
    assert cfg.solver.max_iter == 20 and cfg.solver.base_lr == 0.1 and cfg.seed == 3
    assert cfg.solver.batch_size == 2 and cfg.input.min_size == [256, 288]
    assert cfg.data.train.split == "train"  # untouched nested defaults stay


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    cfg_path = write(tmp_path / "bad.yaml", {"solver": {"max_iters": 5}})
    with pytest.raises(DetkitError) as err:
        load_config(cfg_path)
    message = str(err.value)
    assert "solver.max_iters" in message and str(cfg_path) in message and "solver.max_iter" in message


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    write(tmp_path / "base.yaml", {"model": {"backbone": {"nmae": "resnet18"}}})
    cfg_path = write(tmp_path / "run.yaml", {"_base_": "base.yaml"})
    with pytest.raises(DetkitError, match="model.backbone.nmae.*base.yaml.*model.backbone.name"):
        load_config(cfg_path)


def test_unknown_key_on_command_line():
    with pytest.raises(DetkitError, match="unknown config key 'solver.lr' in the command line"):
        load_config(None, ["solver.lr=0.1"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(DetkitError, match="'solver.max_iter' .* must be an integer, got 'ten'"):
        load_config(None, ["solver.max_iter=ten"])
    with pytest.raises(DetkitError, match="'model.backbone.name' .* one of"):
        load_config(None, ["model.backbone.name=resnet9"])


def test_data_root_fills_both_splits_and_saved_config_reloads(tmp_path):
    cfg = load_config(None, ["data.root=/data/BCCD", "data.train.format=voc", "data.train.split=trainval"])
    assert cfg.data.train.root == cfg.data.test.root == "/data/BCCD"
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(saved)
    assert again == cfg


def test_off_is_a_choice_not_a_boolean(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", {"solver": {"amp": False}}), [])
    assert cfg.solver.amp == "off"
    assert load_config(None, ["solver.amp=off"]).solver.amp == "off"


def test_scientific_notation_is_a_float_in_files_and_overrides(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string; detkit reads it as the float it is (YAML 1.2, JSON).
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  base_lr: 2e-3\n  grad_clip: 1E+1\n  steps: [5e-1, .9]\n  gamma: 1.5e1\n")
    cfg = load_config(path, ["solver.weight_decay=1e-4", "model.rpn.min_size=-1e-3"])
    assert cfg.solver.base_lr == 0.002 and isinstance(cfg.solver.base_lr, float)
    assert cfg.solver.grad_clip == 10.0 and cfg.solver.steps == [0.5, 0.9] and cfg.solver.gamma == 15.0
    assert cfg.solver.weight_decay == 1e-4 and cfg.model.rpn.min_size == -1e-3
    assert load_config(save_config(cfg, tmp_path / "saved.yaml")) == cfg


def test_numeric_string_from_python_is_a_float_but_words_are_not():
    from detkit.config import config_from_dict

    assert config_from_dict({"solver": {"base_lr": "2e-3"}}).solver.base_lr == 0.002
    for bad in ("1e", "e-4", "fast", "nan"):
        with pytest.raises(DetkitError, match=f"'solver.weight_decay' in the command line must be a number, got '{bad}'"):
            load_config(None, [f"solver.weight_decay={bad}"])


def test_train_keys_the_recipe_ignores_are_errors_on_the_command_line_only():
    """train.alternating.* with the joint schedule, train.exact_joint.* with alternating, train.eval_period with
    R-CNN: each names the key; the same sections in a recipe file (configs/demo.yaml keeps train.alternating) load."""
    import pytest

    from detkit.config import load_config
    from detkit.errors import DetkitError

    demo = "configs/demo.yaml"
    with pytest.raises(DetkitError, match=r"train.schedule=joint does not read: train.alternating.lr_factors"):
        load_config(demo, ["train.alternating.lr_factors=[1,1,1,1]"])
    with pytest.raises(DetkitError, match=r"train.schedule=alternating does not read: "
                                          r"train.exact_joint.proposal_grad_scale"):
        load_config(demo, ["train.schedule=alternating", "train.exact_joint.proposal_grad_scale=0.5"])
    with pytest.raises(DetkitError, match=r"model.arch=rcnn does not read: train.eval_period"):
        load_config(None, ["model.arch=rcnn", "train.eval_period=5"])
    cfg = load_config(demo, ["train.schedule=alternating", "train.alternating.lr_factors=[1,1,1,1]"])
    assert cfg.train.alternating.lr_factors == [1, 1, 1, 1]
    assert "train.alternating.iter_fractions" in cfg.sources  # demo.yaml's own section, kept under joint too
    assert load_config(demo).train.schedule == "joint"


def test_provenance_is_a_config_field_not_a_key():
    import dataclasses

    import pytest

    from detkit.config import config_to_dict, load_config
    from detkit.errors import DetkitError

    cfg = load_config(None, ["seed=3"])
    assert cfg.sources == {"seed": "the command line"} and cfg.user_keys == {"seed"}
    assert {"sources", "user_keys"} <= {f.name for f in dataclasses.fields(cfg)}
    assert "sources" not in config_to_dict(cfg) and "user_keys" not in config_to_dict(cfg)
    with pytest.raises(DetkitError, match="unknown config key 'sources'"):
        load_config(None, ["sources={}"])


def test_a_renamed_key_is_an_error_naming_the_new_key(monkeypatch, tmp_path):
    import pytest

    import detkit.config as config
    from detkit.errors import DetkitError

    monkeypatch.setitem(config.RENAMED_KEYS, "model.rpn.nms_iou", "model.rpn.nms_thresh")
    (tmp_path / "old.yaml").write_text("model:\n  rpn:\n    nms_iou: 0.6\n")
    with pytest.raises(DetkitError, match=r"'model.rpn.nms_iou' in .*old.yaml is now 'model.rpn.nms_thresh'"):
        config.load_config(tmp_path / "old.yaml")
    with pytest.raises(DetkitError, match=r"'model.rpn.nms_iou' in the command line is now 'model.rpn.nms_thresh'"):
        config.load_config(None, ["model.rpn.nms_iou=0.6"])
