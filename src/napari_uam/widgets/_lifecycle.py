"""A dock's background run and the napari window it lives in: cancel it when the window closes.

Closing napari while a worker still ran crashed the process (exit 139): the worker reported
progress to a relay Qt had deleted with the dock, and Python shut down while a Qt pool thread
was still inside PyTorch. Closing during training let the run go on and write its checkpoint
afterwards. :class:`RunGuard` watches the dock's top-level window (found through Qt, not
napari's private attributes): when it closes it sets the run's cancel flag, waits a few
seconds for the worker to stop and marks the run ``closed`` so the dock adds no layer and
writes no file. A programmatic close (``viewer.close()``, File > Close Window, Quit; napari
asks its confirmation before these) acts on the Close event; a window-manager close, which
napari may still refuse in a dialog, acts when the window is destroyed; an ``atexit`` hook
is the last net.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import Callable, Optional

from qtpy.QtCore import QEvent, QObject

logger = logging.getLogger(__name__)

#: How long closing the window waits for a cancelled worker to stop (s). Every stage checks
#: the cancel flag at least about once a second, so this is a bound, not a typical wait.
CLOSE_WAIT_S = 8.0


class RunGuard(QObject):
    """Cancels and waits for one dock's running worker when its napari window closes.

    Args:
        dock: the dock widget (its top-level window is looked up when a run starts).

    Use :meth:`begin` when a worker starts (with its cancel flag; it returns the callable the
    worker body calls last, from any thread) and :meth:`finish` when the worker's
    ``finished`` signal arrives; :attr:`closed` tells the dock to drop results.
    """

    def __init__(self, dock):
        super().__init__()
        self._dock = weakref.ref(dock)
        self._cancel: Optional[threading.Event] = None
        self._done = threading.Event()
        self._done.set()
        self._watched = None
        self.closed = False
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # -------------------------------------------------------------- worker lifetime
    def begin(self, cancel: threading.Event) -> Callable[[], None]:
        """A run starts; returns the callable the worker body calls when it ends."""
        self._cancel = cancel
        self._done = threading.Event()
        self._watch()
        return self._done.set

    def finish(self) -> None:
        """The worker's ``finished`` signal arrived (GUI thread)."""
        self._done.set()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def _watch(self) -> None:
        dock = self._dock()
        top = dock.window() if dock is not None else None
        if top is None or top is dock or top is self._watched_window():
            return  # not docked (a bare widget in a test), or watched already
        top.installEventFilter(self)
        top.destroyed.connect(self._on_destroyed)
        # A weak reference: the guard must not keep napari's window (and its viewer) alive.
        self._watched = weakref.ref(top)

    def _watched_window(self):
        return self._watched() if self._watched is not None else None

    # ------------------------------------------------------------------- shutdown
    def shutdown(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """The window closes: cancel the run, wait up to ``wait_s`` for it; True if it stopped."""
        self.closed = True
        if self._cancel is not None:
            self._cancel.set()
        stopped = self._done.wait(wait_s)
        if not stopped:
            logger.warning("napari-uam: a cancelled run did not stop within %.0f s of closing napari", wait_s)
        return stopped

    def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
        # Only a programmatic close is final here; napari may refuse a window-manager close
        # in its confirmation dialog, and that case is handled when the window is destroyed.
        if obj is self._watched_window() and event.type() == QEvent.Type.Close and not event.spontaneous():
            if self.running:
                self.shutdown()
            else:
                self.closed = True
        return False

    def _on_destroyed(self, *_) -> None:
        self._watched = None
        self.shutdown()


def _shutdown_at_exit(ref) -> None:
    guard = ref()
    if guard is not None and guard.running:
        guard.shutdown()
