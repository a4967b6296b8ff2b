"""The layout tells the data flow: these tests read the package's own imports (every import
statement, those inside functions included) and the wheel ``pip`` would install.

- no import cycle between modules, so no order of imports can half-initialise one;
- imports sit at the top of their module, except those of heavy or optional libraries
  (:data:`HEAVY`), which a function imports when it runs; napari's entry modules import none;
- the installed package never imports the recipes (``research/``) or the benchmarks;
- inference (pipeline, segmenters, radiomics, models, classifier loading, tumor mask, I/O,
  batch) never imports ``training/``: the dock's Classify cells works without it;
- the wheel holds the product only (no recipe modules, no paths into a checkout).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "napari_uam"
#: Modules that run when a user classifies cells: none of them may import ``training/``.
INFERENCE = (
    "pipeline",
    "tumor",
    "classify",
    "segment",
    "radiomics",
    "models",
    "io",
    "batch",
    "provenance",
    "validation",
    "domain",
    "scale",
    "pixel_size",
    "device",
    "errors",
    "distributed",
)
#: Recipe modules that used to ship inside the package (issue 19); they live in research/ now.
RECIPES = tuple(
    f"napari_uam/training/{m}.py"
    for m in ("experiments", "train_default", "train_multimodal", "regions", "cell_sets", "protocol", "gbt", "datasets")
) + ("napari_uam/segment/train_learned.py", "napari_uam/segment/tune_post.py", "napari_uam/_sections.py")
#: What an import inside a function may name: a heavy or optional library (the GPU stack,
#: napari and Qt, pyradiomics, Dask, parquet, scikit-learn, slide and chunked-array readers),
#: or a module of the package that imports one at its top (directly or through others).
HEAVY = frozenset(
    {"torch", "napari", "qtpy", "magicgui", "numba", "mamba_ssm", "causal_conv1d", "radiomics", "SimpleITK"}
    | {"dask", "distributed", "pyarrow", "sklearn", "openslide", "zarr"}
    | {"anndata", "h5py", "ome_zarr"}
)
#: Light libraries whose import stays inside a function for a measured reason (name -> why).
DEFERRED = {
    "skimage.measure.approximate_polygon": "imports scipy.signal (~0.5 s) into napari's reader import",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path, modules) -> list[str]:
    """Absolute names of what one import statement of module ``name`` imports: ``from x import
    y`` is ``x.y`` when ``y`` is a module of the package, else ``x``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
    return subs or [target]


def _import_nodes(path: Path):
    """(import statement, inside a function?) for every import of a file; imports under
    ``if TYPE_CHECKING:`` never run and are left out."""
    out = []

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for c in child.orelse:
                    walk(c, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(path.read_text(), str(path)), False)
    return out


def _imports(top_only: bool = False) -> dict[str, set[str]]:
    """Module -> the modules it imports (absolute names, see :func:`_targets`), for every module
    of the package; ``top_only``: only the imports that run when the module is imported."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        out: set[str] = set()
        for node, in_function in _import_nodes(path):
            if not (top_only and in_function):
                out.update(_targets(node, name, path, modules))
        graph[name] = {t for t in out if t != name}
    return graph


def _heavy_at_top(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module -> the :data:`HEAVY` libraries that importing it imports (``graph``: the top-level
    imports; importing ``a.b.c`` runs ``a`` and ``a.b`` first)."""
    memo: dict[str, set[str]] = {}

    def heavy(m: str, seen: frozenset) -> set[str]:
        if m in memo:
            return memo[m]
        parts = m.split(".")
        out = {t.split(".")[0] for t in graph.get(m, ()) if t.split(".")[0] in HEAVY}
        runs = [".".join(parts[:i]) for i in range(1, len(parts))]  # its parent packages
        for t in graph.get(m, ()):
            p = t.split(".")
            runs += [".".join(p[: i + 1]) for i in range(len(p))]
        for r in runs:
            if r in graph and r != m and r not in seen:
                out |= heavy(r, seen | {m})
        memo[m] = out
        return out

    return {m: heavy(m, frozenset()) for m in graph}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the package's modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_import_walk_sees_imports_inside_functions():
    graph = _imports()
    # pipeline imports the tumor model inside a function (heavy, optional): the walk must see it.
    assert "napari_uam.tumor" in graph["napari_uam.pipeline"]
    assert "napari_uam.radiomics._cuda_kernels" in graph["napari_uam.radiomics._cuda"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_inside_functions_defer_only_heavy_or_optional_ones():
    """Issue 19: an import sits at its module's top unless it defers a heavy or optional library
    (:data:`HEAVY`), or a module of the package that imports one at its top; a light library
    only with a measured reason (:data:`DEFERRED`). Top imports show what a module needs, fail
    at import rather than mid-run, and a local import can no longer hide a cycle."""
    modules = _modules()
    heavy = _heavy_at_top(_imports(top_only=True))
    assert heavy["napari_uam.segment.unet"] == {"torch"} and "numba" in heavy["napari_uam.radiomics.fast_backend"]
    assert not heavy["napari_uam.io.reader"] and not heavy["napari_uam.classify.checkpoint"]
    bad = []
    for name, path in sorted(modules.items()):
        rel = path.relative_to(PKG).as_posix()
        for node, in_function in _import_nodes(path):
            if not in_function:
                continue
            for target in _targets(node, name, path, modules):
                if target.split(".")[0] == "napari_uam":
                    ok = bool(heavy.get(target))
                else:
                    names = [f"{target}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
                    ok = target.split(".")[0] in HEAVY or bool(names) and all(n in DEFERRED for n in names)
                if not ok:
                    bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "imports to move to the module's top:\n" + "\n".join(bad)


def test_napari_entry_modules_import_nothing_heavy():
    """napari imports the manifest's reader, writer and sample-data modules when it opens a file
    or a sample (the widgets need napari and Qt anyway): none of them may import torch, numba,
    pyarrow or another :data:`HEAVY` library at its top, directly or through the package."""
    manifest = (PKG / "napari.yaml").read_text()
    entries = set(re.findall(r"python_name:\s*([\w.]+):", manifest))
    assert {"napari_uam.io.napari_reader", "napari_uam.io.writers", "napari_uam.sample_data"} <= entries
    heavy = _heavy_at_top(_imports(top_only=True))
    loads = {m: sorted(heavy[m]) for m in entries if not m.startswith("napari_uam.widgets")}
    assert not {m: h for m, h in loads.items() if h}, loads


def test_every_import_of_the_package_names_a_module_that_exists():
    """Imports inside functions run only when called: a moved module must not leave one
    pointing nowhere (``from .io.reader`` inside ``io/`` is ``napari_uam.io.io.reader``)."""
    packages = {".".join(_module_name(p).split(".")) for p in PKG.rglob("__init__.py")}
    modules = set(_imports()) | packages
    missing = {
        m: sorted(t for t in targets if t.startswith("napari_uam") and t not in modules)
        for m, targets in _imports().items()
    }
    assert not {m: t for m, t in missing.items() if t}


def test_no_import_cycle_between_modules():
    cycle = _cycle(_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _with_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` with the imports Python makes on the way: importing ``a.b.c`` runs ``a`` and
    ``a.b`` (their ``__init__``) first, so a module importing ``a.b.c`` depends on them too."""
    out = {}
    for m, targets in graph.items():
        deps = set(targets)
        for t in targets:
            parts = t.split(".")
            deps |= {".".join(parts[:i]) for i in range(2, len(parts))}
        out[m] = {d for d in deps if d != m and not m.startswith(d + ".")}
    return out


def test_no_import_time_cycle_through_package_inits():
    """What runs when a module is imported (its top-level imports and the ``__init__`` of every
    package on the way) has no cycle: such a cycle fails with 'partially initialized module'
    depending on which module a user imports first (a cycle classify -> radiomics -> segment ->
    classify once broke the dock in a fresh process while every test importing pipeline first passed)."""
    cycle = _cycle(_with_package_inits(_imports(top_only=True)))
    assert cycle is None, "import cycle at import time: " + " -> ".join(cycle)


def test_the_package_never_imports_recipes_or_benchmarks():
    bad = {
        m: sorted(t for t in ts if t.split(".")[0] in {"research", "benchmarks", "tests"})
        for m, ts in _imports().items()
    }
    assert not {m: t for m, t in bad.items() if t}


def test_inference_never_imports_training():
    inference = {m for m in _imports() if m.split(".")[1:2] and m.split(".")[1] in INFERENCE}
    assert "napari_uam.pipeline" in inference and "napari_uam.classify.checkpoint" in inference
    graph = _imports()
    bad = {m: sorted(t for t in graph[m] if t.startswith("napari_uam.training")) for m in inference}
    assert not {m: t for m, t in bad.items() if t}


def test_the_wheel_holds_the_product_only(tmp_path):
    """``pip wheel`` of a copy of the checkout: no recipe module, nothing outside the package,
    no source file that finds its data relative to a checkout (``parents[3]``, ``../shared``)."""
    for item in ("pyproject.toml", "README.md", "src"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / item)
    shutil.rmtree(tmp_path / "src" / "napari_uam.egg-info", ignore_errors=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel without build isolation here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("napari_uam-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if n.endswith(".py")]
    assert code and all(n.startswith("napari_uam/") for n in code), [n for n in code if not n.startswith("napari_uam/")]
    assert not set(code) & set(RECIPES), sorted(set(code) & set(RECIPES))
    assert not [n for n in code if "research" in n or "experiment" in n]
    with zipfile.ZipFile(wheel) as z:
        for n in code:
            text = z.read(n).decode()
            assert "parents[3]" not in text and '"shared"' not in text, n
    for data in (
        "napari_uam/napari.yaml",
        "napari_uam/weights/uam_default.pt",
        "napari_uam/weights/nuclei_unet.pt",
        "napari_uam/weights/tumor_mask.pt",
    ):
        assert data in names, f"{data} missing from the wheel"


def test_pixel_size_rules_have_one_home():
    """The range, the default and the missing-pixel-size message are written once
    (``napari_uam.pixel_size``); they used to be four copies with two different ranges."""

    rules = {
        "range": re.compile(r"0\.0[15]\s*<=|<=\s*20(\.0)?\b|MIN_MPP\s*=|MAX_MPP\s*="),
        "default": re.compile(r"DEFAULT_MPP\s*=\s*0\.5"),
        "message": re.compile(r"does not record its pixel size"),
    }
    for path in PKG.rglob("*.py"):
        if path.name == "pixel_size.py" and path.parent == PKG:
            continue
        text = path.read_text()
        for rule, pattern in rules.items():
            assert not pattern.search(text), f"{path.relative_to(PKG)} restates the pixel-size {rule}"


def test_every_reader_of_a_pixel_size_applies_the_one_range(tmp_path):
    import numpy as np
    import tifffile

    from napari_uam.io.reader import read_image
    from napari_uam.pixel_size import MAX_MPP, MIN_MPP, plausible
    from napari_uam.widgets._layers import mpp_from_metadata

    for mpp in (MIN_MPP / 2, MAX_MPP * 1.25, 0.25):
        tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 40, 3), np.uint8),
                         resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")  # fmt: skip
        _, read = read_image(tmp_path / "a.tif")
        assert (read is not None) == plausible(mpp) == (mpp == 0.25)
        assert mpp_from_metadata({"mpp": mpp})[1] == plausible(mpp)
