"""Schedules as stages: finished stages are skipped, a stopped stage resumes inside its folder."""
import json

import pytest

from detkit.engine.stages import DONE_FILE, Stage, run_stages, stage_done
from detkit.errors import DetkitError


def test_finished_stages_are_skipped_and_a_stopped_one_resumes(tmp_path):
    calls = []

    def first(folder, resume):
        calls.append(("first", resume))
        (folder / "out.txt").write_text("1")
        return {"value": 1.0}

    def second(folder, resume):
        calls.append(("second", resume))
        if not (folder / "partial").exists():
            (folder / "partial").write_text("half")
            raise KeyboardInterrupt  # stopped part-way
        return {"value": 2.0}

    stages = [Stage("1_first", first), Stage("2_second", second)]
    with pytest.raises(KeyboardInterrupt):
        run_stages(stages, tmp_path)
    assert stage_done(tmp_path / "1_first") and not stage_done(tmp_path / "2_second")
    results = run_stages(stages, tmp_path, resume=True)
    assert calls == [("first", False), ("second", False), ("second", True)]
    assert results == {"1_first": {"value": 1.0}, "2_second": {"value": 2.0}}
    assert json.loads((tmp_path / "2_second" / DONE_FILE).read_text()) == {"value": 2.0}


def test_a_fresh_stage_folder_is_not_a_resume(tmp_path):
    seen = []
    run_stages([Stage("only", lambda folder, resume: seen.append(resume) or {})], tmp_path, resume=True)
    assert seen == [False]


@pytest.mark.parametrize("names", [["a", "a"], ["../x"], [""]])
def test_bad_stage_names_are_errors(tmp_path, names):
    with pytest.raises(DetkitError, match="stage name"):
        run_stages([Stage(n, lambda f, r: {}) for n in names], tmp_path)
