"""tools/export.py, infer.py --onnx and eval.py --onnx end to end on a tiny VOC set, and their one-line errors.

The tools run in this process (runpy, as `python tools/X.py` would) to spare a PyTorch import per call; the runtime's
freedom from PyTorch is checked in a subprocess."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from tests.data.conftest import write_voc  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
SMALL = ["input.min_size=96", "input.max_size=160", "model.rpn.pre_nms_top_n_test=200",
         "model.rpn.post_nms_top_n_test=60", "model.roi_heads.representation_size=64", "threads=1",
         "data.num_workers=0"]


def tool(name: str, *args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """Runs tools/<name> in-process with these arguments; (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "tools" / name), run_name="__main__")
    out, err = capsys.readouterr()
    return stop.value.code or 0, out, err


@pytest.fixture(scope="module")
def setup_run(tmp_path_factory):
    """A tiny VOC set (images of several sizes, class 'block') and random R18-FPN weights saved as training does."""
    from detkit.config import load_config
    from detkit.modeling.build import build_model

    root = tmp_path_factory.mktemp("deploy")
    samples = {}
    for n, (h, w) in enumerate([(64, 96), (90, 70), (80, 80), (120, 100)]):
        image = np.full((h, w, 3), 40, np.uint8)
        image[10:40, 8 + 4 * n:40 + 4 * n] = (40, 200, 220)
        samples[f"{n:03d}"] = (image, [("block", (9 + 4 * n, 11, 40 + 4 * n, 40), 0)])
    data = write_voc(root / "voc", samples, splits=("test",))
    voc = [f"data.root={data}", "data.test.format=voc", "data.test.split=test", "data.train.format=voc",
           "model.class_names=[block]", "model.category_ids=[5]", *SMALL]
    torch.manual_seed(0)
    model = build_model(load_config(DEMO, voc), 1)
    weights = root / "model_final.pth"
    torch.save({"model": model.state_dict(), "meta": {"class_names": ["block"], "category_ids": [5]}}, weights)
    return root, data, weights, voc


def test_export_then_eval_and_infer_with_onnx_runtime(setup_run, float_graph, monkeypatch, capsys):
    root, data, weights, voc = setup_run
    onnx_path = float_graph
    tool("eval.py", DEMO, "--weights", str(weights), *voc, "test.amp=off", f"output_dir={root / 'eager'}",
         "--no-progress", monkeypatch=monkeypatch, capsys=capsys)
    code, out, err = tool("eval.py", DEMO, "--onnx", str(onnx_path), *voc, f"output_dir={root / 'onnx'}",
                          "--no-progress", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and "AP50" in out and "VOC mAP" in out, err
    eager = json.loads((root / "eager" / "eval" / "metrics.json").read_text())
    onnx = json.loads((root / "onnx" / "eval_onnx" / "metrics.json").read_text())  # beside eval/, never over it
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75", "voc/mAP"):
        assert abs(onnx[key] - eager[key]) <= 0.001, (key, onnx[key], eager[key])
    images = sorted((data / "JPEGImages").glob("*.jpg"))
    code, out, err = tool("infer.py", "--onnx", str(onnx_path), *map(str, images), "--out", str(root / "infer"),
                          "--score-thresh", "0.0", "--no-progress", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    results = json.loads((root / "infer" / "detections.json").read_text())
    assert results and {r["category_id"] for r in results} == {5} and {r["category"] for r in results} == {"block"}
    assert sorted(p.name for p in (root / "infer").glob("*.jpg")) == [p.name for p in images]
    assert json.loads((root / "infer" / "onnx_metadata.json").read_text())["category_ids"] == [5]
    from detkit.deploy import OnnxDetector  # the same numbers as the Python face, image by image

    detector = OnnxDetector(onnx_path)
    first = [r for r in results if r["image_id"] == 1]
    boxes, labels, scores = detector(cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB))
    assert len(first) == len(scores) and first[0]["score"] == pytest.approx(float(scores[0]), abs=1e-5)


@pytest.fixture(scope="module")
def float_graph(setup_run):
    """tools/export.py's float32 graph of the tiny run (exported once for the tests that read it)."""
    root, data, weights, voc = setup_run
    out = root / "model.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["export.py", DEMO, "--weights", str(weights), *voc])
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(REPO / "tools" / "export.py"), run_name="__main__")
    assert not stop.value.code and out.is_file()
    return out


def test_export_int8_quantizes_the_fully_connected_layers_and_keeps_the_metadata(setup_run, float_graph,
                                                                                  monkeypatch, capsys):
    import onnx

    from detkit.deploy import OnnxDetector

    root, data, weights, voc = setup_run
    out = root / "int8" / "model_int8.onnx"
    code, stdout, err = tool("export.py", DEMO, "--weights", str(weights), "--int8", "--out", str(out), *voc,
                             monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and "int8" in stdout, err
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops and "Conv" in ops and "ConvInteger" not in ops  # fc layers only
    int8 = OnnxDetector(out)
    assert int8.metadata["quantized"].startswith("int8") and int8.category_ids == [5]
    image = cv2.cvtColor(cv2.imread(str(sorted((data / "JPEGImages").glob("*.jpg"))[3])), cv2.COLOR_BGR2RGB)
    q, f = int8(image), OnnxDetector(float_graph)(image)
    assert len(f.scores) >= 5 and len(q.scores) >= 5
    # int8 weights move boxes and scores a little (the random model's scores are near-ties, so the order may change):
    # each of the float graph's first five detections has an int8 one of its class within 2 px and 0.05 in score
    for box, label, score in zip(f.boxes[:5], f.labels[:5], f.scores[:5]):
        near = (np.abs(q.boxes - box).max(axis=1) < 2.0) & (q.labels == label) & (np.abs(q.scores - score) < 0.05)
        assert near.any(), (box, label, score)
    code, _, err = tool("export.py", DEMO, "--weights", str(weights), "--int8", "--out", str(out), *voc,
                        monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "--overwrite" in err  # never over an existing file (a one-line error, status 2)


def test_export_refuses_bad_input_in_one_line(setup_run, tmp_path, monkeypatch, capsys):
    root, data, weights, voc = setup_run
    existing = tmp_path / "taken.onnx"
    existing.write_bytes(b"user's file")
    cases = [
        ((DEMO, "--weights", str(weights), "--out", str(existing), *voc), "exists: pass --overwrite"),
        ((str(REPO / "configs" / "rcnn_r18.yaml"), "--weights", str(weights), "--out", str(tmp_path / "r.onnx")),
         "model.arch=rcnn cannot be exported"),
        ((DEMO, "--weights", str(weights), "--out", str(tmp_path / "o.onnx"), "--opset", "13", *voc), "opset >= 16"),
        ((DEMO, "--weights", str(weights), "--out", str(tmp_path / "w.onnx"), *voc, "model.backbone.name=resnet34"),
         "model_final.pth: model"),
    ]
    for args, message in cases:
        code, out, err = tool("export.py", *args, monkeypatch=monkeypatch, capsys=capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, (args, err)
    assert existing.read_bytes() == b"user's file"
    assert not list(tmp_path.glob("*.onnx.tmp"))


def test_runtime_refuses_files_that_are_not_detkit_exports(setup_run, tmp_path, monkeypatch, capsys):
    import onnx
    from onnx import TensorProto, helper

    from detkit.deploy import OnnxDetector
    from detkit.errors import DetkitError

    plain = tmp_path / "plain.onnx"
    node = helper.make_node("Identity", ["image"], ["boxes"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, [None])],
                              [helper.make_tensor_value_info("boxes", TensorProto.UINT8, [None])])
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(DetkitError, match="not a detkit export"):
        OnnxDetector(plain)
    truncated = tmp_path / "truncated.onnx"
    code, _, err = tool("export.py", DEMO, "--weights", str(setup_run[2]), "--out", str(tmp_path / "good.onnx"),
                        *setup_run[3], monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    truncated.write_bytes((tmp_path / "good.onnx").read_bytes()[:5000])
    with pytest.raises(DetkitError, match="cannot be loaded by ONNX Runtime"):
        OnnxDetector(truncated)
    with pytest.raises(DetkitError, match="does not exist"):
        OnnxDetector(tmp_path / "missing.onnx")
    detector = OnnxDetector(tmp_path / "good.onnx")
    with pytest.raises(DetkitError, match=r"\(H, W, 3\) uint8"):
        detector(np.zeros((20, 20, 3), np.float32))
    for path in (plain, truncated):  # the tools say it in one line too
        code, _, err = tool("infer.py", "--onnx", str(path), str(next((setup_run[1] / "JPEGImages").glob("*.jpg"))),
                            "--out", str(tmp_path / f"out_{path.stem}"), monkeypatch=monkeypatch, capsys=capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err, err


def test_the_runtime_imports_neither_torch_nor_torchvision(setup_run, float_graph, tmp_path):
    root, data, weights, voc = setup_run
    onnx_path = float_graph
    image = next((data / "JPEGImages").glob("*.jpg"))
    code = ("import sys, json; from detkit.deploy import OnnxDetector; "
            f"boxes, labels, scores = OnnxDetector({str(onnx_path)!r}, threads=1)({str(image)!r}); "
            "print(json.dumps([len(scores), [m for m in ('torch', 'torchvision') if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    count, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert count > 0 and loaded == []
