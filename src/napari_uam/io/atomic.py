"""Atomic file writes: write to a temporary file in the target folder, then rename.

A crash, a cancel or a full disk while writing leaves the previous file (if any) intact and
no half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any worker thread.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    Args:
        path: the final file path.
        overwrite: if False and ``path`` exists, raise :class:`FileExistsError` before writing.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another folder or allow overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def move_into_place(src: Path, dst: Path) -> None:
    """Rename a staged output onto its target; a folder output (OME-Zarr) replaces an existing
    one by moving it aside first (a rename cannot replace a non-empty folder)."""
    if src.is_dir() and dst.is_dir():
        old = src.with_name(src.name + ".old")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def remove_output(path: Path) -> None:
    """Remove one output, a file or a folder (OME-Zarr); nothing when it is not there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
