"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml), no import cycle between
detkit's modules (grimp, lazy imports inside functions included), and an inference run loads no training code."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("detkit.recipes", "detkit.engine.trainer", "detkit.engine.solver", "detkit.engine.stages")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports")
    assert lint is not None, "import-linter is a test dependency (pip install .[test])"
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def strongly_connected(graph) -> list[set[str]]:
    """Tarjan's strongly connected components of size > 1 among the graph's modules."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    sys.setrecursionlimit(10000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


def test_no_import_cycle_between_detkit_modules():
    import grimp

    cycles = strongly_connected(grimp.build_graph("detkit"))
    assert cycles == [], f"import cycles: {[sorted(c) for c in cycles]}"


def test_the_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, d alone
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert strongly_connected(Graph()) == [{"a", "b", "c"}]


def test_an_inference_run_loads_no_training_code(tmp_path):
    """tools/infer.py on a tiny trained model, then sys.modules as the run left it (printed by a wrapper)."""
    weights, config = _tiny_trained(tmp_path)
    image = _an_image(tmp_path)
    script = ("import runpy, sys, json, atexit\n"
              "atexit.register(lambda: print('MODULES=' + json.dumps(sorted(sys.modules))))\n"
              f"sys.argv = ['infer.py', '--config', {str(config)!r}, '--weights', {str(weights)!r}, "
              f"'--out', {str(tmp_path / 'out')!r}, '--no-progress', {str(image)!r}]\n"
              f"runpy.run_path({str(ROOT / 'tools' / 'infer.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    modules = json.loads(result.stdout.rsplit("MODULES=", 1)[1])
    assert "detkit.modeling.detectors.two_stage" in modules  # the run did build a detector
    loaded = [m for m in modules if m.startswith(TRAINING)]
    assert loaded == [], f"an inference run loaded training code: {loaded}"


def _tiny_trained(tmp_path: Path) -> tuple[Path, Path]:
    """An untrained tiny demo Faster R-CNN saved as a training run would (model_final.pth with its classes,
    config.yaml): what infer.py loads."""
    import torch

    from detkit.config import load_config, save_config
    from detkit.modeling.build import build_model
    from tests.test_tools_no_lost_work import DEMO, TINY

    run = tmp_path / "run"
    cfg = load_config(DEMO, [*TINY, f"output_dir={run}", "device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=1)
    run.mkdir()
    torch.save({"model": model.state_dict(), "meta": {"class_names": ["cell"], "category_ids": [1]}},
               run / "model_final.pth")
    return run / "model_final.pth", save_config(cfg, run / "config.yaml")


def _an_image(tmp_path: Path) -> Path:
    import cv2
    import numpy as np

    path = tmp_path / "image.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return path
