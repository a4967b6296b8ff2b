"""Replacing one marked section of a markdown file, keeping the others.

Several commands share a docs page (``docs/performance.md``, ``docs/results.md``); each owns
the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``. The file is rewritten
atomically so that an interrupted command never leaves a half-written page.
"""

from __future__ import annotations

import os
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path, body: str, section: tuple[str, str], title: str = "") -> Path:
    """Write ``body`` (with or without the two markers of ``section``) into ``path``.

    Args:
        path: the markdown file (created with ``title`` when absent).
        body: the new section, markers included.
        section: (start marker, end marker).
        title: first line of a new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else f"{title}\n\n"
    start, end = section
    inner = body.strip()
    # A body that already carries the markers (a generator that writes them itself) is not
    # wrapped twice: the section always holds exactly one start and one end marker.
    while inner.startswith(start):
        inner = inner[len(start) :].strip()
    while inner.endswith(end):
        inner = inner[: -len(end)].strip()
    body = f"{start}\n{inner}\n{end}"
    if start in text and end in text:
        pre, rest = text.split(start, 1)
        # Everything up to the last end marker of this section goes: earlier runs that wrapped
        # the markers twice left duplicates behind.
        text = pre + body + rest.rsplit(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
