"""Proposal stores validated where they are read (issue 21 item 3) and safe with many writers (issue 25 item 3):
damaged meta.json refused unless rebuilt, every file checked, temporary files of live writers kept, bind atomic."""
from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import detkit.data.proposals as props
from detkit.config import config_from_dict
from detkit.edge import check_config_data
from detkit.data.proposal_store import ProposalStore, temp_path, validate_boxes
from detkit.data.proposals import cap_workers, propose_dataset
from detkit.data.voc import VOCDataset
from detkit.errors import DetkitError
from tests.data.conftest import pattern_image, write_voc
from tests.data.test_proposals import fake_search


@pytest.fixture
def voc5(tmp_path: Path) -> Path:
    """VOC folder of five 40x60 images (H x W), each with one box, split 'train'."""
    samples = {f"im{i}": (pattern_image(40, 60, 40 * i), [("cell", (3, 5, 30, 25), 0)]) for i in range(5)}
    return write_voc(tmp_path / "voc5", samples, jpeg_quality=100)


@pytest.fixture
def filled(voc5, tmp_path, monkeypatch):
    """A complete store of the five images (two fake boxes each) and its dataset."""
    monkeypatch.setattr(props, "propose_image", fake_search([]))
    dataset = VOCDataset(voc5, "train")
    propose_dataset(dataset, tmp_path / "s", progress=False)
    return dataset, ProposalStore(tmp_path / "s")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- meta.json missing or damaged -------------------------------------------------------------------------------

def test_a_store_whose_meta_json_was_deleted_is_refused_not_relabelled(filled, monkeypatch):
    dataset, store = filled
    (store.root / "meta.json").unlink()
    before = snapshot(store.root)
    with pytest.raises(DetkitError, match=r"holds 5 proposal files but no meta.json, so the settings they were made "
                                          r"with are unknown; rebuild it with tools/propose.py --rebuild") as error:
        propose_dataset(dataset, store.root, top_k=7, progress=False)  # other settings: must not be recorded
    assert "\n" not in str(error.value) and str(store.root) in str(error.value)
    assert snapshot(store.root) == before  # nothing written, nothing deleted


@pytest.mark.parametrize("content,what", [
    ('{"images": {}}', "has no 'settings' object"),
    ('[1, 2, 3]', "holds a list, not an object"),
    ('{"settings": {"top_k": 2000', "is not valid JSON"),
    ('{"settings": {}, "images": {"1": 5}}', "maps image ids to something other than file names"),
])
def test_a_damaged_meta_json_is_one_line_naming_it_and_the_rebuild(filled, content, what):
    dataset, store = filled
    (store.root / "meta.json").write_text(content)
    before = snapshot(store.root)
    for call in (lambda: propose_dataset(dataset, store.root, progress=False), lambda: dataset_with(dataset, store)[0]):
        with pytest.raises(DetkitError, match=what) as error:
            call()
        message = str(error.value)
        assert "\n" not in message and f"{store.root / 'meta.json'} " in message and "--rebuild" in message
    assert snapshot(store.root) == before


def test_rebuild_refills_a_damaged_store_and_keeps_other_files(filled, monkeypatch):
    dataset, store = filled
    (store.root / "meta.json").write_text("[]")
    (store.root / "notes.txt").write_text("mine")
    calls: list = []
    monkeypatch.setattr(props, "propose_image", fake_search(calls))
    recall = propose_dataset(dataset, store.root, top_k=1, rebuild=True, progress=False)
    assert len(calls) == 5 and recall["boxes_per_image"] == 1.0
    assert json.loads((store.root / "meta.json").read_text())["settings"]["top_k"] == 1
    assert (store.root / "notes.txt").read_text() == "mine"


# --- every proposal file validated where it is read ---------------------------------------------------------------

def dataset_with(dataset: VOCDataset, store: ProposalStore) -> VOCDataset:
    reader = copy.copy(dataset)
    reader.proposals = ProposalStore(store.root)
    return reader


@pytest.mark.parametrize("boxes,what", [
    (np.float32([[1, 2, 10, 12], [np.nan, 2, 10, 12]]), r"box 1 \[nan, 2.0, 10.0, 12.0\] is not finite"),
    (np.float32([[1, 2, np.inf, 12]]), r"box 0 \[1.0, 2.0, inf, 12.0\] is not finite"),
    (np.float32([[1, 2, 10, 12], [10, 2, 1, 12]]), r"box 1 \[10.0, 2.0, 1.0, 12.0\] has no area"),
    (np.float32([[70, 2, 90, 12]]), r"box 0 \[70.0, 2.0, 90.0, 12.0\] has no area inside the 60x40 \(WxH\) image"),
    (np.float32([[1, 2, 10, 12, 0.9]]), r"holds shape \(1, 5\), not \(P, 4\)"),
    (np.array([["a", "b", "c", "d"]]), r"holds <U1 values, not float32 boxes"),
    (np.tile(np.float32([[1, 2, 10, 12]]), (2001, 1)), r"holds 2001 boxes, more than the store's top_k=2000"),
])
def test_a_bad_proposal_file_never_reaches_training_or_evaluation(filled, boxes, what):
    dataset, store = filled
    np.save(store.root / "3.npy", boxes)
    reader = dataset_with(dataset, store)
    with pytest.raises(DetkitError, match=what) as error:  # the data path training and evaluation both read
        reader[2]
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"proposal file {store.root / '3.npy'}")
    assert message.endswith("delete it and run tools/propose.py to fill it")
    (store.root / "recall.json").unlink()
    with pytest.raises(DetkitError, match=what):  # and the recall of a store
        propose_dataset(dataset, store.root, progress=False)


def test_a_truncated_or_garbage_proposal_file_names_the_file(filled):
    _, store = filled
    path = store.root / "2.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DetkitError, match=rf"proposal file {path} is unreadable \(.*\); delete it and run"):
        store.load(2)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(DetkitError, match="is unreadable \\(not a .npy file") as error:
        store.load(2)
    assert "pickle" not in str(error.value)


def test_boxes_reaching_past_the_image_are_clipped_and_integers_accepted(filled):
    _, store = filled
    np.save(store.root / "2.npy", np.int64([[-5, 2, 90, 12]]))
    assert store.load(2, (40, 60)).tolist() == [[0, 2, 60, 12]]
    assert store.load(2).dtype == np.float32
    assert validate_boxes(np.zeros((0, 4), np.float32), "x", (40, 60)).shape == (0, 4)  # no proposals is valid


def test_the_search_never_stores_a_box_without_area():
    boxes = props.finish_boxes(np.float32([[1, 1, 1, 9], [2, 2, 8, 8]]), 40, 60, min_size=0.0, top_k=10)
    assert boxes.tolist() == [[2, 2, 8, 8]]


def test_the_alternating_store_says_how_it_is_filled(tmp_path):
    store = ProposalStore(tmp_path, fill_hint="rerun train.py with --resume")
    with pytest.raises(DetkitError, match="has no proposals for image id 4; rerun train.py with --resume$"):
        store.load(4)


# --- --check-data reads the configured stores, fills none -----------------------------------------------------------

def test_check_data_reports_store_problems_and_fills_nothing(filled, voc5, tmp_path, monkeypatch, capsys):
    _, store = filled
    np.save(store.root / "3.npy", np.float32([[np.nan, 0, 1, 1]]))
    (store.root / "5.npy").unlink()
    monkeypatch.setattr(props, "propose_image", lambda *a, **k: pytest.fail("check-data ran selective search"))
    missing = tmp_path / "missing"
    cfg = config_from_dict({"data": {"root": str(voc5), "num_workers": 0,
                                     "train": {"format": "voc", "split": "train", "proposals": str(store.root)},
                                     "test": {"format": "voc", "split": "train", "proposals": str(missing)}},
                            "proposals": {"top_k": 1000}})
    before = snapshot(store.root)
    assert check_config_data(cfg) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith(f"[train] proposal store {store.root} was made with top_k=2000, not 1000")
               for line in lines), lines
    assert any(f"lacks 1 of 5 images: image id 5 (im4.jpg); tools/propose.py CONFIG fills them" in line
               for line in lines), lines
    assert any(line.startswith(f"[train] proposal file {store.root / '3.npy'}: box 0") for line in lines), lines
    assert f"[test] proposal store {missing} does not exist; tools/propose.py CONFIG fills it" in lines
    assert lines[-1] == "check data: 4 problem(s) among 10 images and 2 proposal store(s)"
    assert snapshot(store.root) == before and not missing.exists()


# --- many writers ---------------------------------------------------------------------------------------------------

def test_temporary_names_are_unique_across_processes_and_machines(tmp_path):
    names = {temp_path(tmp_path / "1.npy").name for _ in range(50)}
    assert len(names) == 50
    name = next(iter(names))  # .1.npy.<host>.<pid>.<random>.tmp
    assert name.startswith(".1.npy.") and name.endswith(".tmp")
    host, pid = name[len(".1.npy."):].split(".")[:2]
    assert host and int(pid) == os.getpid()


def test_only_temporary_files_of_gone_writers_are_removed(tmp_path):
    store = ProposalStore(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    mine = temp_path(tmp_path / "1.npy")  # this live process, in flight
    host = mine.name[len(".1.npy."):].split(".")[0]
    dead = tmp_path / f".2.npy.{host}.{2 ** 22 + 12345}.abcd0123.tmp"  # a pid above pid_max: a killed writer
    other_fresh = tmp_path / ".3.npy.othermachine.77.abcd0123.tmp"  # another machine's writer, in flight
    other_old = tmp_path / ".4.npy.othermachine.78.abcd0123.tmp"
    legacy_dead = tmp_path / f"5.npy.tmp{2 ** 22 + 12346}"
    for path in (mine, dead, other_fresh, other_old, legacy_dead):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(other_old, (hours_ago, hours_ago))
    assert store.remove_partial_files() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other_fresh.name])


def test_concurrent_binds_agree_on_one_meta_json_and_refuse_other_settings(tmp_path):
    store_root = tmp_path / "s"
    images = {i: f"im{i}.jpg" for i in range(1, 40)}
    errors: list[str] = []
    start = threading.Barrier(12)

    def writer(top_k: int, extra: int) -> None:
        start.wait()
        try:
            ProposalStore(store_root).bind({"top_k": top_k}, {**images, 100 + extra: f"x{extra}.jpg"})
        except DetkitError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=writer, args=(5, n)) for n in range(10)]
    threads += [threading.Thread(target=writer, args=(6, 50)), threading.Thread(target=writer, args=(6, 51))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    meta = json.loads((store_root / "meta.json").read_text())
    winner = meta["settings"]["top_k"]
    assert len(errors) == (2 if winner == 5 else 10) and all("was made with top_k=" in e for e in errors)
    extras = range(10) if winner == 5 else (50, 51)
    assert meta["images"] == {**{str(i): n for i, n in images.items()},
                              **{str(100 + e): f"x{e}.jpg" for e in extras}}  # every writer's images, none lost
    assert sorted(p.name for p in store_root.iterdir()) == ["meta.json"]  # no lock or temporary file left


def test_workers_are_capped_at_the_cores_of_each_rank(monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with caplog.at_level(logging.WARNING):
        assert cap_workers(16) == 2 and cap_workers(2) == 2 and cap_workers(1) == 1
    assert caplog.messages == ["proposals.workers=16 but this process has 2 core(s): using 2 worker process(es)"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert props.available_workers() == 1 and cap_workers(16) == 1


@pytest.mark.parametrize("content", ["[]", "{\"images\": 5}", "not json"])
def test_a_damaged_recall_json_is_computed_again(filled, content):
    dataset, store = filled
    good = json.loads((store.root / "recall.json").read_text())
    (store.root / "recall.json").write_text(content)
    assert propose_dataset(dataset, store.root, progress=False) == good
    assert json.loads((store.root / "recall.json").read_text()) == good
