"""Writing one benchmark's results into its own marked section of a docs/ markdown file.

Several benchmarks share ``docs/performance.md``; each owns the text between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and leaves the rest untouched.
"""

from __future__ import annotations

import os
import platform
import re
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
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
