"""The recorder's progress off a terminal: plain lines, never a carriage-return bar.

Needs no model and no torch: `python -m pytest tools/tests/test_recorder_progress.py`.
"""

import io
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))
from recorder.generate import PlainProgress, progress_bar  # noqa: E402


def test_a_log_gets_plain_lines():
    log = io.StringIO()  # not a terminal
    bar = progress_bar(5, "prompt-1", no_progress=False, stream=log)
    assert isinstance(bar, PlainProgress)
    bar.interval = 0.0  # a line per update, not per 10 s
    for _ in range(5):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5, lines  # close() does not repeat the last count
    assert lines[-1].startswith("prompt-1: 5/5 tokens (")


def test_the_final_count_is_always_said():
    log = io.StringIO()
    bar = PlainProgress(100, "p", interval=3600, stream=log)
    bar.update(37)
    bar.close()
    assert log.getvalue().startswith("p: 37/100 tokens (")


def test_no_progress_prints_nothing():
    log = io.StringIO()
    bar = progress_bar(5, "p", no_progress=True, stream=log)
    bar.update(5)
    bar.close()
    assert log.getvalue() == ""
