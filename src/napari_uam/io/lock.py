"""An exclusive lock on an output folder, so that two runs never write into it at once.

Two batch runs into the same ``--out`` once interleaved their outputs, markers and manifest
(run B reported 834 nuclei while the files held run A's 738). The lock is an OS advisory
lock (``flock``; ``msvcrt.locking`` on Windows) on a hidden file in the folder: the system
releases it when the holding process ends, however it ends (SIGKILL included), so a killed
run never leaves a stale lock behind (at most an unlocked file, taken over by the next run).
The file holds who took the lock, for the message, and is removed on release. Removing it
would race with a process that opened it just before: so a process that got the lock checks
that the path still names the file it locked, and starts again otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import UAMError

LOCK_NAME = ".napari_uam.lock"


class FolderLockedError(UAMError):
    """Another process holds the output folder's lock."""


class FolderLock:
    """Exclusive lock on ``folder`` (a context manager; :meth:`acquire` / :meth:`release`).

    Args:
        folder: the output folder (must exist).
        what: what the holder is doing, recorded in the lock file.
        instead: the end of the refusal message, what the user can do instead (the command
            line's default names ``--out``; the dock's export names its export folder).
    """

    def __init__(self, folder, what: str = "napari-uam run",
                 instead: str = "wait for it to finish, or choose another --out folder."):  # fmt: skip
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.instead = instead
        self._fh = None

    def acquire(self) -> "FolderLock":
        """Take the lock without waiting.

        Raises:
            FolderLockedError: another process holds it; the message names it.
        """
        while True:
            fh = open(self.path, "a+", encoding="utf-8")
            try:
                _lock(fh)
            except OSError:
                fh.seek(0)
                holder = _describe(fh.read())
                fh.close()
                raise FolderLockedError(
                    f"Another napari-uam run{holder} is writing into {self.folder}; {self.instead}"
                ) from None
            if _same_file(fh, self.path):
                break
            fh.close()  # the holder removed the file between our open and our lock: again
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "what": self.what,
                    "argv": sys.argv,
                    "since_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        )
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        """Give the lock back (also done by the system when the process ends)."""
        if self._fh is not None:
            try:
                # Removed while still locked, so that nobody locks this file after us.
                try:
                    self.path.unlink(missing_ok=True)
                except OSError:  # Windows does not remove an open file; the next run reuses it
                    pass
                _unlock(self._fh)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fh, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except OSError:  # removed meanwhile
        return False


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f" (process {int(info['pid'])}, since {info['since_utc']})"
    except (ValueError, KeyError, TypeError):
        return ""


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def holder(folder) -> Optional[dict]:
    """Who holds (or last held) ``folder``'s lock, as recorded in the lock file, or None."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


__all__ = ["FolderLock", "FolderLockedError", "LOCK_NAME", "holder"]
