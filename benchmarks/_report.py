"""Writing one benchmark's results into its own marked section of a docs/ markdown file.

Several benchmarks share ``docs/performance.md``; each owns the text between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and leaves the rest untouched.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def machine() -> str:
    """One line describing where a benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def today() -> str:
    return time.strftime("%Y-%m-%d")


def write_section(name: str, markdown: str, path: Path = DOCS / "performance.md", title: str = "# Performance") -> Path:
    """Replace (or append) the section ``name`` of ``path`` with ``markdown``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # research/
    from research.sections import markers, replace_section

    start, end = markers(name)
    return replace_section(path, f"{start}\n{markdown.strip()}\n{end}", (start, end), title)
