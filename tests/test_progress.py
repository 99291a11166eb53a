"""Progress bars on a terminal, periodic log lines elsewhere (issue #21 item 5: a Slurm or nohup log got a full
line per update)."""
import io
import sys

import pytest

from detkit import progress
from detkit.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_updates_become_a_few_plain_lines(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    for _ in progress_bar(range(5000), desc="infer", unit="img"):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) <= 3  # the first and the last line, within one LOG_PERIOD_S
    assert lines[-1].startswith("infer: 5000/5000 (100%) elapsed ") and "eta 00:00" in lines[-1]


def test_off_a_terminal_a_line_per_period(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(progress, "LOG_PERIOD_S", 0.0)  # every update is due
    with progress_bar(total=4, desc="svms") as bar:
        for _ in range(4):
            bar.update(1)
    assert [line.split(" elapsed")[0] for line in log.getvalue().splitlines()] == [
        "svms: 0/4 (0%)", "svms: 1/4 (25%)", "svms: 2/4 (50%)", "svms: 3/4 (75%)", "svms: 4/4 (100%)"]


def test_on_a_terminal_it_stays_a_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for _ in progress_bar(range(3), desc="features"):
        pass
    assert "\r" in terminal.getvalue() and "features: 100%|" in terminal.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()])
def test_no_progress_shows_nothing(monkeypatch, stream):
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress_bar(range(3), desc="x", disable=True)) == [0, 1, 2]
    assert stream.getvalue() == ""
