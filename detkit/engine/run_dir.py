"""Guards for a training run's output folder: no silent reuse, no run over a file, no stale temporary files, and a
resume that refuses a changed model or a change a finished stage read, and records every other changed key, before
anything is written (check_resume: one rule for every recipe, each stage declaring what it reads in StageReads).

Files of a run (under `output_dir`): see RUN_FILES; `config_changes.jsonl` holds one line per resume that changed
the config: {"iteration": k, "changes": {"dotted.key": [old, new], ...}}, with "stage": the stage the changes
apply from (its iteration k) in a staged run.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from detkit.errors import DetkitError
from detkit.keys import flatten_keys

logger = logging.getLogger(__name__)

# Everything tools/train.py writes into output_dir; --overwrite removes exactly these (and nothing else).
RUN_FILES = ("last.pth", "last.prev.pth", "last.diverged.pth", "model_final.pth", "metrics.jsonl", "metrics.json",
             "config.yaml", "config_changes.jsonl", "detections_test.json", "detections.png", "report.html")
# The files whose presence means a training run already used the folder.
_RUN_MARKERS = ("last.pth", "model_final.pth", "metrics.jsonl", "config.yaml")
# Temporary names of detkit.atomic's writer: `.NAME.HOST.PID.RANDOM.tmp` (and `NAME.tmp`, from older versions).
_TEMP_PATTERN = re.compile(r"^(\.(last|last\.prev|model_final)\.pth\..+\.tmp|\.?[\w.]+\.(json|jsonl|yaml)(\.[\w-]+)*\.tmp)$")
CHANGES_FILE = "config_changes.jsonl"
# A finished stage's marker (detkit.engine.stages writes it); here so the resume check needs no training code.
DONE_FILE = "stage_done.json"


def check_output_dir(path: str | os.PathLike, key: str = "output_dir") -> Path:
    """Raise a DetkitError when `path` or a folder above it is an existing file; return it as a Path."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            where = "is" if candidate == path else f"lies under {candidate}, which is"
            raise DetkitError(f"{key} {path} {where} a file, not a folder; choose another {key}.")
    return path


def check_not_a_run(path: str | os.PathLike, key: str, *, tool: str = "eval") -> Path:
    """Refuse a folder of a training run as the output of evaluation or inference (it would replace config.yaml),
    and, for tool="infer", the folder of an evaluation (metrics.json: its detections.json would be replaced)."""
    path = check_output_dir(path, key)
    if any((path / name).exists() for name in ("last.pth", "metrics.jsonl")):
        raise DetkitError(f"{key} {path} holds a training run, whose config.yaml and metrics this would replace; "
                          f"write beside it, e.g. {key} {path / tool}")
    if tool == "infer" and (path / "metrics.json").exists():
        raise DetkitError(f"{key} {path} holds an evaluation (metrics.json), whose detections.json and config.yaml "
                          f"this would replace; write beside it, e.g. {key} {path.parent / 'infer'}")
    return path


def make_output_dir(path: str | os.PathLike, key: str = "output_dir") -> Path:
    """Create the folder `path` (and its parents), turning an operating-system refusal into one DetkitError."""
    path = check_output_dir(path, key)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DetkitError(f"cannot create {key} {path}: {error.strerror or error}.") from None
    return path


def prepare_output_dir(path: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Check a training output folder before anything is written: refuse to reuse a run's folder silently.

    A folder holding a run (last.pth, model_final.pth, metrics.jsonl or config.yaml) needs `resume` (continue it)
    or `overwrite` (its run files are removed now, other files stay). Nothing is created or removed on refusal.
    The folder is then locked for this process (lock_output_dir).
    """
    path = check_output_dir(path)
    if resume and overwrite:
        raise DetkitError("--resume and --overwrite contradict each other; pass one of them.")
    found = [name for name in _RUN_MARKERS if (path / name).exists()] if path.is_dir() else []
    if found and not resume and not overwrite:
        raise DetkitError(f"output_dir {path} already holds a run ({', '.join(found)}); pass --resume to continue "
                          "it, --overwrite to start over in it, or choose another output_dir.")
    make_output_dir(path)
    lock_output_dir(path)  # held until the process ends: no second run, and no removal under a live one
    if overwrite:
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        for events in path.glob("events.out.tfevents.*"):
            events.unlink()
    return path


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files an interrupted save of this run left in `output_dir`; return what was removed."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if _TEMP_PATTERN.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        logger.info("Removed %d temporary file(s) left by an interrupted save in %s.", len(removed), folder)
    return removed


_HELD: dict[str, Any] = {}  # output folders whose lock this process holds: resolved path -> open lock file


def lock_output_dir(output_dir: str | os.PathLike) -> None:
    """Take the advisory lock <output_dir>/.lock for this process (until release or exit); refuse a second run.

    This is what makes a temporary file "stale" (no live run can be writing it) and keeps a requeued job from
    training into the folder of one still running. Where the file system has no locks, runs go on unlocked.
    The lock is a POSIX record lock (fcntl F_SETLK, via lockf), which forked children do not inherit: a SIGKILLed
    trainer's orphaned loader workers cannot keep it (an flock, shared by every inherited descriptor, stayed held
    until the last orphan exited and refused the resume). The lock ends when this process closes any descriptor
    of .lock, so nothing else in detkit opens that file.
    """
    import fcntl  # POSIX only, as are the signals the trainer handles

    key = str(Path(output_dir).resolve())
    if key in _HELD:
        return
    path = Path(output_dir) / ".lock"
    handle = open(path, "a")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DetkitError(f"another process is training in {output_dir} (it holds {path}); wait for it to "
                              "end, or choose another output_dir.") from None
        return  # no locks on this file system
    _HELD[key] = handle


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Give back the lock lock_output_dir took (nothing when this process does not hold it)."""
    handle = _HELD.pop(str(Path(output_dir).resolve()), None)
    if handle is not None:
        handle.close()


@contextlib.contextmanager
def exclusive_run(output_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the output folder's lock for a block (or keep holding it, when this process already does)."""
    held = str(Path(output_dir).resolve()) in _HELD
    lock_output_dir(output_dir)
    try:
        yield
    finally:
        if not held:
            release_output_dir(output_dir)


def stored_config(checkpoint: str | os.PathLike) -> tuple[dict | None, int]:
    """The config and iteration stored in a detkit checkpoint, read without loading its tensors into memory."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a corrupt or foreign file: one line naming it
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DetkitError(f"{checkpoint} cannot be read to resume from ({reason}).") from None
    if not isinstance(state, dict) or "iteration" not in state:
        raise DetkitError(f"{checkpoint} is not a detkit checkpoint; it cannot be resumed.")
    return state.get("config"), int(state["iteration"])


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs between two config dicts, as {key: (saved, current)}."""
    old, new = flatten_keys(saved, tuples_as_lists=True), flatten_keys(current, tuples_as_lists=True)
    return {key: (old[key], new[key]) for key in sorted(old.keys() & new.keys()) if old[key] != new[key]}


@dataclass(frozen=True)
class StageReads:
    """The config keys one stage of a recipe reads (its output depends on them), for the resume check.

    name: the stage's folder under output_dir ("." for a run trained in output_dir itself).
    reads: dotted keys or sections ("solver" covers solver.*, "" every key); "key[i]" is element i of a list.
    skip: keys or sections under `reads` that the stage does not read (its output does not depend on them).
    continues: whether the stage stopped part-way takes a changed key from where it stopped (a Trainer does); a
        stage that does not (a cache or SVMs half made with the old value) counts as finished for the check.
    after: the stages whose outputs it reads (redoing one of them makes this one stale).
    """

    name: str
    reads: tuple[str, ...]
    skip: tuple[str, ...] = ()
    continues: bool = True
    after: tuple[str, ...] = ()

    def reads_change(self, key: str, before: Any, after: Any) -> bool:
        """Whether the change of `key` from `before` to `after` reaches what this stage reads."""
        if any(_under(pattern, key) for pattern in self.skip):
            return False
        for pattern in self.reads:
            element = re.fullmatch(r"(.+)\[(\d+)\]", pattern)
            if element is None:
                if _under(pattern, key):
                    return True
            elif element.group(1) == key:
                i = int(element.group(2))
                if not (isinstance(before, list) and isinstance(after, list) and len(before) == len(after)):
                    return True  # a list of another length: every element may have moved
                if i < len(before) and before[i] != after[i]:
                    return True
        return False


ONE_FOLDER = (StageReads(".", ("",)),)  # a run trained in output_dir itself: every key, continued from last.pth
FILLED_FROM_DATA = ("model.class_names", "model.category_ids")  # None in a config until the training set fills them


def _under(pattern: str, key: str) -> bool:
    return pattern == "" or key == pattern or key.startswith(pattern + ".")


def _stage_state(output_dir: Path, stage: StageReads) -> str:
    """"done", "started" (something saved, not finished) or "new"."""
    folder = output_dir / stage.name
    if stage.name == ".":
        return "started" if (folder / "last.pth").is_file() else "new"
    if (folder / DONE_FILE).is_file():
        return "done"
    return "started" if folder.is_dir() and any(folder.iterdir()) else "new"


def saved_run_config(output_dir: str | os.PathLike) -> tuple[dict | None, Path | None]:
    """The config a run started with: <output_dir>/config.yaml (every recipe writes it once its resume check
    passed, before any stage runs; R-CNN's and alternating's stage folders may hold no checkpoint at all), else
    the config in <output_dir>/last.pth (a run from before config.yaml); (None, None) when neither exists."""
    folder = Path(output_dir)
    yaml_file = folder / "config.yaml"
    if yaml_file.is_file():
        import yaml

        try:
            tree = yaml.safe_load(yaml_file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise DetkitError(f"{yaml_file} cannot be read to resume from ({type(error).__name__}); restore it, "
                              "or start a new run in another output_dir.") from None
        if not isinstance(tree, dict):
            raise DetkitError(f"{yaml_file} holds no config mapping; restore it, or start a new run in another "
                              "output_dir.")
        return tree, yaml_file
    checkpoint = folder / "last.pth"
    if checkpoint.is_file():
        return stored_config(checkpoint)[0], checkpoint
    return None, None


def check_resume(output_dir: str | os.PathLike, current: Mapping[str, Any],
                 stages: Sequence[StageReads] = ONE_FOLDER, *, only: Sequence[str] | None = None
                 ) -> dict[str, tuple[Any, Any]]:
    """Compare the config about to resume with the one the run started with (saved_run_config); writes nothing.

    A change is refused (one DetkitError naming every such key) when a finished stage read it (it would silently
    keep the old value; the message names the stage and says to delete its folder to redo it), or when it is a
    `model.*` key read by a stage that saved weights part-way (they belong to the saved model). A stage finished
    or started on the output of a stage that is no longer done (its folder deleted) is refused too. Any other change is
    applied from the stage that runs next on, warned about here, and returned for `record_config_changes`.
    `output_dir` may change (a moved run folder) without a warning; `only` restricts the check to those keys;
    FILLED_FROM_DATA keys that are still None in `current` are left to a check after the data is read.
    """
    out = Path(output_dir)
    saved, where = saved_run_config(out)
    if saved is None:
        return {}
    states = {stage.name: _stage_state(out, stage) for stage in stages}
    stale = [f"{s.name} is {'finished' if states[s.name] == 'done' else 'started'} but {before} it was built from "
             "is not finished" for s in stages if states[s.name] != "new" for before in s.after
             if states.get(before) != "done"]
    if stale:
        raise DetkitError(f"--resume of {out}: {'; '.join(stale)}; delete the folders of the stages after it too "
                          "(under output_dir), then --resume redoes them.")
    changes = config_changes(saved, current)
    changes.pop("output_dir", None)
    for key in [k for k in changes if (only is not None and k not in only)
                or (k in FILLED_FROM_DATA and changes[k][1] is None)]:
        del changes[key]
    finished, model = [], []
    for key, (before, after) in changes.items():
        readers = [s for s in stages if s.reads_change(key, before, after)]
        kept = [s.name for s in readers if states[s.name] == "done"
                or (states[s.name] == "started" and not s.continues)]
        redo = _with_dependents(kept, stages, states)
        if kept:
            finished.append(f"{key} ({_short(before)} -> {_short(after)}) was read by the finished stage(s) "
                            f"{', '.join(kept)}, which would keep the old value (to redo with the new one, delete "
                            f"{', '.join(str(out / name) for name in redo)})")
        elif key.startswith("model.") and any(states[s.name] == "started" for s in readers):
            model.append(f"{key} ({_short(before)} -> {_short(after)})")
    if model and not finished:
        started = [s.name for s in stages if states[s.name] == "started"]
        checkpoint = out / started[0] / "last.pth" if started else where
        at = f" (iteration {stored_config(checkpoint)[1]})" if checkpoint.name == "last.pth" and \
            checkpoint.is_file() else ""
        raise DetkitError(f"--resume cannot change the model of {checkpoint}{at}: {', '.join(model)}; drop these "
                          "overrides, or start a new run in another output_dir.")
    if finished or model:
        also = f"; the model of the stage in progress cannot change either: {', '.join(model)}" if model else ""
        raise DetkitError(f"--resume of {out} refused: {'; '.join(finished)}{also}; or drop these overrides.")
    since = _resume_point(out, stages, states)
    for key, (before, after) in changes.items():
        logger.warning("--resume: %s changes from %s to %s; used from %s on (recorded in %s).",
                       key, _short(before), _short(after), since, CHANGES_FILE)
    return changes


def _with_dependents(names: Sequence[str], stages: Sequence[StageReads], states: Mapping[str, str]) -> list[str]:
    """The stages named and every saved stage built on them (directly or not), in schedule order."""
    chosen = set(names)
    for stage in stages:  # stages are in order, so one pass finds dependents of dependents
        if states[stage.name] != "new" and chosen.intersection(stage.after):
            chosen.add(stage.name)
    return [s.name for s in stages if s.name in chosen]


def _resume_point(out: Path, stages: Sequence[StageReads], states: Mapping[str, str]) -> str:
    """Where a resume goes on: "iteration k" of the run, "stage NAME (iteration k)" or "stage NAME" (no
    checkpoint in its folder); for the warnings."""
    pending = next((s.name for s in stages if states[s.name] != "done"), None)
    if pending is None:
        return "the final evaluation"
    checkpoint = out / pending / "last.pth"
    if pending == ".":
        return f"iteration {stored_config(checkpoint)[1] if checkpoint.is_file() else 0}"
    return f"stage {pending}" + (f" (iteration {stored_config(checkpoint)[1]})" if checkpoint.is_file() else "")


def check_resume_config(output_dir: str | os.PathLike, current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """check_resume of a run trained in output_dir itself (a changed `model.*` key refused once last.pth exists;
    any other change honoured by the new run: the optimizer's lr, momentum and weight decay included, see Trainer)."""
    return check_resume(output_dir, current, ONE_FOLDER)


def record_config_changes(output_dir: str | os.PathLike, changes: Mapping[str, tuple[Any, Any]],
                          stages: Sequence[StageReads] = ONE_FOLDER) -> None:
    """Append the changes a resume made to <output_dir>/config_changes.jsonl (nothing when there are none): the
    iteration they apply from and, for a staged run, the stage that runs next."""
    if not changes:
        return
    out = Path(output_dir)
    states = {stage.name: _stage_state(out, stage) for stage in stages}
    pending = next((s.name for s in stages if states[s.name] != "done"), None)
    checkpoint = out / (pending or ".") / "last.pth"
    line: dict[str, Any] = {"iteration": stored_config(checkpoint)[1] if checkpoint.is_file() else 0}
    if pending != ".":
        line["stage"] = pending  # None: every stage was done (only the final evaluation runs again)
    line["changes"] = {k: [a, b] for k, (a, b) in changes.items()}
    with open(out / CHANGES_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` the same file as `source` (a hard link, or a copy where links fail), replacing it atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
