"""A dock's background run: the worker plumbing the classifier and train docks share.

A dock captures a job in the GUI thread and hands it to :class:`BackgroundRun`, which runs a
body ``body(job, cancelled, report)`` (a plain function, or a generator whose yields reach
the dock's ``yielded`` slot) in a napari worker thread. The body returns an :class:`Outcome`
or raises; every exception becomes an outcome too (:meth:`Outcome.of_exception`), so napari
never shows a traceback dialog for a bad image or a missing model. ``report`` carries one
object per call to the dock's progress slot through a Qt signal; ``cancelled()`` reads the
run's cancel flag, which Cancel and closing napari (:class:`~._lifecycle.RunGuard`) set.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Optional

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from ..errors import CancelledError, UAMError
from ._lifecycle import RunGuard

logger = logging.getLogger(__name__)

#: Errors that carry a message for the user; anything else is a bug and goes to the log.
EXPECTED: tuple[type[BaseException], ...] = (UAMError, OSError)


@dataclass
class Outcome:
    """What a run gives back to the GUI thread; a dock's outcome adds its results.

    A dock's subclass gives each field it adds a default: the outcome of an exception
    (:meth:`of_exception`) has only ``job``, ``cancelled`` and ``error``.

    Attributes:
        job: the job the run was given.
        cancelled: the run stopped because its cancel flag was set.
        error: why the run failed, or None.
    """

    job: Any
    cancelled: bool = False
    error: Optional[BaseException] = None

    @classmethod
    def of_exception(
        cls, job: Any, err: BaseException, *, expected: tuple = EXPECTED, log: str = "napari-uam run failed"
    ) -> Outcome:
        """The outcome of a body that raised ``err``: cancelled, or failed with ``err``.

        An error not in ``expected`` is a bug: it is logged with its traceback (``log`` is the
        message), since the dock only says "details are in the log".
        """
        if isinstance(err, CancelledError):
            return cls(job=job, cancelled=True)
        if not isinstance(err, expected):
            logger.error(log, exc_info=err)
        return cls(job=job, error=err)


#: ``fail(err)``: the outcome of a body that raised ``err``.
Fail = Callable[[BaseException], Outcome]


def call_body(body: Callable, job: Any, cancelled, report, ended: Callable[[], None], fail: Fail) -> Outcome:
    """Run a plain-function body; exceptions become ``fail(err)``, ``ended()`` is called last."""
    try:
        try:
            return body(job, cancelled, report)
        except Exception as err:  # noqa: BLE001 - a bug must not take napari down; fail() logs it
            return fail(err)
    finally:
        # Whatever happened: closing napari waits for this call before letting Python exit.
        ended()


def iterate_body(
    body: Callable, job: Any, cancelled, report, ended: Callable[[], None], fail: Fail
) -> Generator[Any, None, Outcome]:
    """:func:`call_body` for a generator body: its yields pass through to the worker."""
    try:
        try:
            return (yield from body(job, cancelled, report))
        except Exception as err:  # noqa: BLE001 - a bug must not take napari down; fail() logs it
            return fail(err)
    finally:
        ended()


class ProgressRelay(QObject):
    """Carries ``report(obj)`` calls from the worker thread to the GUI thread."""

    progressed = Signal(object)


class BackgroundRun:
    """One dock's background run: its cancel flag, its :class:`RunGuard` and its worker.

    Args:
        dock: the dock widget (its napari window is watched while a run goes on).
        on_progress: the dock's slot for each object the body reports (a bound method).
    """

    def __init__(self, dock, on_progress: Callable[[Any], None]):
        self.guard = RunGuard(dock)
        self.cancel_flag = threading.Event()
        self.worker = None
        # No Qt parent: the worker holds the relay's emit, so the relay must outlive the dock
        # when napari closes mid-run (a parented relay is deleted with the dock, and the next
        # progress report from the worker thread crashed the process).
        self._relay = ProgressRelay()
        self._relay.progressed.connect(on_progress)

    @property
    def active(self) -> bool:
        """True from the start of a worker until its ``finished`` signal was handled."""
        return self.worker is not None

    @property
    def closed(self) -> bool:
        """True once the dock's napari window closed: add no layer, write no file."""
        return self.guard.closed

    @property
    def cancelled(self) -> bool:
        """True once Cancel (or closing napari) asked the current run to stop."""
        return self.cancel_flag.is_set()

    def start(
        self,
        body: Callable,
        job: Any,
        outcome: type[Outcome],
        *,
        returned: Callable,
        finished: Callable,
        yielded: Optional[Callable] = None,
        expected: tuple = EXPECTED,
        log: str = "napari-uam run failed",
    ) -> None:
        """Run ``body(job, cancelled, report)`` in a worker; its outcome goes to ``returned``.

        ``outcome`` is the dock's :class:`Outcome` class, built by
        :meth:`Outcome.of_exception` when the body raises (``expected`` and ``log`` as there).
        """
        generator = inspect.isgeneratorfunction(body)
        if yielded is not None and not generator:
            raise TypeError("yielded= needs a generator body; a plain function yields nothing")
        # A fresh flag per run: a run still winding down never sees the next run's state.
        self.cancel_flag = threading.Event()
        ended = self.guard.begin(self.cancel_flag)
        fail = functools.partial(outcome.of_exception, job, expected=expected, log=log)
        runner = iterate_body if generator else call_body
        worker = create_worker(
            runner, body, job, self.cancel_flag.is_set, self._relay.progressed.emit, ended, fail, _ignore_errors=True
        )
        self.launch(worker, returned=returned, finished=finished, yielded=yielded)

    def launch(self, worker, *, returned: Callable, finished: Callable, yielded: Optional[Callable] = None) -> None:
        """Start ``worker`` (made by ``create_worker``) as this dock's current worker."""
        # Bound methods only: Qt drops them if the dock is closed while the worker runs.
        if yielded is not None:
            worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.finished.connect(finished)
        self.worker = worker
        worker.start()

    def cancel(self) -> bool:
        """Ask the current run to stop at its next check; False when no worker runs."""
        if self.worker is None:
            return False
        self.cancel_flag.set()
        return True

    def finish(self, sender) -> bool:
        """A worker's ``finished`` signal arrived from ``sender`` (the dock's ``self.sender()``).

        Returns:
            True when the dock should tidy up: it was the current worker (now released) and
            napari is not closing. False for a worker already handed over (an export followed
            by its overwrite re-run) or while napari closes (the dock's widgets may be gone).
        """
        if self.worker is None or sender is not self.worker.signals:
            return False
        self.guard.finish()
        if self.guard.closed:
            return False
        self.worker = None
        return True

    def release(self) -> None:
        """Forget the current worker before it finishes (its ``finished`` is then ignored)."""
        self.worker = None
