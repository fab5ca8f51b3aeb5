"""Progress output (tissuemap.progress): plain log lines when stderr is not a terminal, paced checks."""

import logging

import pytest

from tissuemap import progress as progress_module
from tissuemap.log import logger
from tissuemap.progress import Progress


@pytest.fixture
def log_lines(caplog):
    """The tissuemap logger's messages (it does not propagate to the root logger once a command configured it)."""
    logger.addHandler(caplog.handler)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield lambda: [record.getMessage() for record in caplog.records if record.name == "tissuemap"]
    logger.setLevel(level)
    logger.propagate = propagate
    logger.removeHandler(caplog.handler)


def test_without_a_terminal_progress_is_plain_lines_each_tenth(log_lines, capfd):
    with Progress(200, "mapping", "step") as progress:
        for step in range(1, 201):
            progress.update(step, f"loss {1000 - step}")
    lines = log_lines()
    assert len(lines) == 10
    assert lines[0].startswith("mapping: 20/200 steps (10%), 0 s elapsed, about 0 s left; loss 980")
    assert lines[-1] == "mapping: 200/200 steps (100%), 0 s elapsed; loss 800"
    captured = capfd.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out


def test_a_line_at_least_every_30_seconds(log_lines, monkeypatch):
    clock = iter(range(0, 10_000, 20))  # 20 s per reading
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    with Progress(1000, "signatures", "epoch") as progress:
        for epoch in (1, 2, 3, 4):
            progress.update(epoch + 0.5)
    # 20 s, 40 s, 60 s, 80 s after the start: lines at 40 s and 80 s (30 s or more after the previous one)
    assert log_lines() == ["signatures: 2.5/1,000 epochs (0%), 40 s elapsed, about 4 h 26 min left",
                           "signatures: 4.5/1,000 epochs (0%), 1 min 20 s elapsed, about 4 h 54 min left"]


def test_due_paces_the_callers_checks(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    progress = Progress(10, "mapping", "step", enabled=False)
    answers = []
    for tick in range(7):
        now[0] = tick * 0.4
        answers.append(progress.due())
    # every CHECK_SECONDS (1 s): at 1.2 s, then at 2.4 s
    assert answers == [False, False, False, True, False, False, True]
