"""The docks' shared worker plumbing (:mod:`napari_uam.widgets._worker`), run for real.

Each test starts a body through :class:`BackgroundRun` in a real napari worker thread
(``create_worker``) and waits, through qtbot, for the worker's own ``returned`` and
``finished`` signals: the outcome a body returns or raises arrives in the GUI thread, its
progress reports reach the dock's slot, Cancel and closing napari stop it through the run's
cancel flag, and the body's ``ended()`` has been called before the outcome arrives.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

import pytest
from qtpy.QtWidgets import QWidget

from napari_uam.errors import CancelledError, NoNucleiError
from napari_uam.widgets._worker import BackgroundRun, Outcome

pytestmark = pytest.mark.gui

TIMEOUT_MS = 20_000
LOGGER = "napari_uam.widgets._worker"


@dataclass
class _Result(Outcome):
    value: Optional[int] = None


class _Dock(QWidget):
    """A dock as the real ones use the run: bound-method slots that record what arrives."""

    def __init__(self):
        super().__init__()
        self.reports: list = []
        self.yields: list = []
        self.outcomes: list = []
        self.tidied = 0
        self.finished = 0
        self.running_when_returned: list[bool] = []
        self.threads: set = set()
        self.cancel_on_report = False
        self.run = BackgroundRun(self, self.on_progress)

    def start(self, body, job="job", **kwargs) -> None:
        yielded = self.on_yielded if inspect.isgeneratorfunction(body) else None
        self.run.start(body, job, _Result, returned=self.on_returned, finished=self.on_finished,
                       yielded=yielded, **kwargs)  # fmt: skip

    def on_progress(self, obj) -> None:
        self.threads.add(threading.get_ident())
        self.reports.append(obj)
        if self.cancel_on_report:
            self.run.cancel()

    def on_yielded(self, obj) -> None:
        self.yields.append(obj)

    def on_returned(self, out) -> None:
        self.threads.add(threading.get_ident())
        # ``returned`` is queued before ``finished``: the guard only knows the body is over
        # here if the body itself called ended().
        self.running_when_returned.append(self.run.guard.running)
        self.outcomes.append(out)

    def on_finished(self) -> None:
        self.finished += 1
        if self.run.finish(self.sender()):
            self.tidied += 1


@pytest.fixture
def dock(qtbot):
    widget = _Dock()
    qtbot.addWidget(widget)
    yield widget
    widget.run.cancel()  # never leave a worker running into the next test
    qtbot.waitUntil(lambda: not widget.run.guard.running, timeout=TIMEOUT_MS)


def _wait(qtbot, dock, n: int = 1) -> Outcome:
    qtbot.waitUntil(lambda: dock.finished >= n, timeout=TIMEOUT_MS)
    assert len(dock.outcomes) == n
    return dock.outcomes[-1]


def test_a_plain_body_returns_its_outcome_and_reports_progress(qtbot, dock):
    seen = {}
    gate = threading.Event()

    def body(job, cancelled, report):
        gate.wait(10.0)
        seen["thread"] = threading.get_ident()
        seen["cancelled"] = cancelled()
        report({"event": "status", "n": 1})
        report(("segment", 0.5))
        return _Result(job=job, value=41 + 1)

    dock.start(body, job="the job")
    assert dock.run.active and dock.run.guard.running  # held at the gate
    gate.set()
    out = _wait(qtbot, dock)
    assert type(out) is _Result and out.job == "the job" and out.value == 42
    assert not out.cancelled and out.error is None
    assert dock.reports == [{"event": "status", "n": 1}, ("segment", 0.5)]
    assert dock.running_when_returned == [False]  # ended() was called by the body's wrapper
    assert dock.tidied == 1 and not dock.run.active and not dock.run.closed and not seen["cancelled"]
    # The body ran off the GUI thread; its reports and outcome were handled on the GUI thread.
    assert seen["thread"] != threading.get_ident() and dock.threads == {threading.get_ident()}


def test_a_generator_body_yields_to_the_dock_and_returns_its_outcome(qtbot, dock):
    def body(job, cancelled, report):
        for stage in ("load", "segment"):
            report((stage, 0.5))
            yield (stage, 1.0)
        return _Result(job=job, value=len(job))

    dock.start(body, job="abc")
    out = _wait(qtbot, dock)
    assert out.value == 3 and out.error is None and not out.cancelled
    assert dock.yields == [("load", 1.0), ("segment", 1.0)]
    assert dock.reports == [("load", 0.5), ("segment", 0.5)]
    assert dock.running_when_returned == [False]


def test_a_uam_error_becomes_an_error_outcome_without_a_log_record(qtbot, dock, caplog):
    err = NoNucleiError("No nuclei found in 'he'.")

    def body(job, cancelled, report):
        report("before")
        raise err

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        dock.start(body)
        out = _wait(qtbot, dock)
    assert type(out) is _Result and out.job == "job" and out.value is None
    assert out.error is err and not out.cancelled
    assert dock.reports == ["before"]
    assert dock.running_when_returned == [False] and dock.tidied == 1
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_a_bug_becomes_an_error_outcome_and_is_logged_with_its_traceback(qtbot, dock, caplog):
    def body(job, cancelled, report):
        yield "first"
        return {}["missing"]  # a plain bug, mid-generator

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        dock.start(body, log="napari-uam training failed")
        out = _wait(qtbot, dock)
    assert isinstance(out.error, KeyError) and not out.cancelled and type(out) is _Result
    assert dock.yields == ["first"] and dock.running_when_returned == [False]
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert records[0].getMessage() == "napari-uam training failed"
    assert records[0].exc_info[1] is out.error  # the traceback goes to the log


def test_which_errors_are_expected_is_the_docks_choice(qtbot, dock, caplog):
    def body(job, cancelled, report):
        raise PermissionError("read-only folder")

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        dock.start(body)  # the default: an OSError has a message for the user
        first = _wait(qtbot, dock, 1)
        assert [r for r in caplog.records if r.name == LOGGER] == []
        dock.start(body, expected=(NoNucleiError,))  # a dock that says "see the log" for it
        second = _wait(qtbot, dock, 2)
    assert isinstance(first.error, PermissionError) and isinstance(second.error, PermissionError)
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == ["napari-uam run failed"]


def test_cancel_sets_the_flag_the_body_polls_and_the_next_run_gets_a_fresh_one(qtbot, dock):
    polls = []

    def body(job, cancelled, report):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10.0:
            polls.append(cancelled())
            if polls[-1]:
                raise CancelledError("Run cancelled.")
            report(len(polls))
            time.sleep(0.01)
        return _Result(job=job, value=-1)

    dock.cancel_on_report = True  # Cancel as soon as the first progress report arrives
    t0 = time.monotonic()
    dock.start(body)
    out = _wait(qtbot, dock)
    assert out.cancelled and out.error is None and out.value is None and type(out) is _Result
    assert time.monotonic() - t0 < 5.0 and polls[0] is False and polls[-1] is True
    assert dock.running_when_returned == [False] and dock.run.cancelled and not dock.run.closed
    assert not dock.run.cancel()  # nothing runs any more

    dock.cancel_on_report = False

    def quick(job, cancelled, report):
        return _Result(job=job, value=int(cancelled()))

    dock.start(quick)
    assert not dock.run.cancelled  # a fresh flag: the last run's Cancel does not carry over
    assert _wait(qtbot, dock, 2).value == 0


def test_a_plain_body_cannot_have_a_yielded_slot(dock):
    with pytest.raises(TypeError, match="generator"):
        dock.run.start(lambda job, cancelled, report: None, "job", _Result, returned=dock.on_returned,
                       finished=dock.on_finished, yielded=dock.on_yielded)  # fmt: skip
    assert not dock.run.active and not dock.run.guard.running  # nothing was started


def test_closing_napari_cancels_waits_for_the_body_and_keeps_the_dock_out(qtbot, dock):
    started = threading.Event()

    def body(job, cancelled, report):
        started.set()
        while not cancelled():
            time.sleep(0.01)
        time.sleep(0.2)  # winding down after the flag: shutdown must wait for this
        raise CancelledError("Run cancelled.")

    dock.start(body)
    assert started.wait(10.0)
    t0 = time.monotonic()
    assert dock.run.guard.shutdown(wait_s=10.0)  # what the guard does when the window closes
    assert 0.2 <= time.monotonic() - t0 < 5.0  # it waited for ended(), no longer
    assert dock.run.closed and dock.run.cancelled
    out = _wait(qtbot, dock)
    assert out.cancelled
    # The finished worker is not tidied up: the dock's widgets may be gone by now.
    assert dock.tidied == 0 and dock.run.active


def test_a_worker_handed_over_is_ignored_when_it_finishes(qtbot, dock):
    """Export's overwrite flow: its worker is released before it finishes and a new one starts."""
    gate = threading.Event()

    def first(job, cancelled, report):
        gate.wait(10.0)
        return _Result(job=job, value=1)

    def second(job, cancelled, report):
        return _Result(job=job, value=2)

    dock.start(first)
    dock.run.release()
    assert not dock.run.active
    dock.start(second)
    out = _wait(qtbot, dock, 1)
    assert out.value == 2 and dock.tidied == 1 and not dock.run.active
    gate.set()
    qtbot.waitUntil(lambda: dock.finished == 2, timeout=TIMEOUT_MS)
    assert [o.value for o in dock.outcomes] == [2, 1]
    assert dock.tidied == 1  # the released worker's finished signal changed nothing
    assert not dock.run.finish(object())  # nor does a signal from anything else
