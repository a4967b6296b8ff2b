"""The ecosystem's side of the outputs, for tests: the fields QuPath reads from a GeoJSON it
imports (File > Import objects), so that every writer is held to one schema, and an OME-Zarr
label image as ``ome_zarr``'s own reader gives it.

QuPath (0.4 and later) reads a FeatureCollection of Features whose ``properties`` carry
``objectType`` (``detection``, ``cell``, ``annotation``, ``tile``), an optional
``classification {name, color: [r, g, b]}`` and optional ``measurements``: a map of name to a
finite number. Geometries are Polygons or MultiPolygons of closed rings of at least 4 positions.
"""

from __future__ import annotations

import math

import numpy as np

OBJECT_TYPES = {"detection", "cell", "annotation", "tile"}


def _ring_problems(ring, where: str) -> list[str]:
    if not isinstance(ring, list) or len(ring) < 4:
        return [f"{where}: a ring needs at least 4 positions"]
    if ring[0] != ring[-1]:
        return [f"{where}: the ring is not closed"]
    bad = [p for p in ring if not (isinstance(p, list) and len(p) == 2 and all(math.isfinite(v) for v in p))]
    return [f"{where}: positions must be [x, y] numbers"] if bad else []


def qupath_geojson_problems(doc: dict, object_type: str) -> list[str]:
    """Every way ``doc`` departs from what QuPath imports as objects of ``object_type``."""
    if doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        return ["not a FeatureCollection"]
    problems: list[str] = []
    for k, f in enumerate(doc["features"]):
        where = f"feature {k}"
        if f.get("type") != "Feature":
            problems.append(f"{where}: type is not Feature")
        geom = f.get("geometry") or {}
        if geom.get("type") == "Polygon":
            polys = [geom.get("coordinates")]
        elif geom.get("type") == "MultiPolygon":
            polys = geom.get("coordinates")
        else:
            problems.append(f"{where}: geometry {geom.get('type')!r} is not a (Multi)Polygon")
            continue
        for poly in polys:
            for ring in poly:
                problems += _ring_problems(ring, where)
        props = f.get("properties") or {}
        if props.get("objectType") not in OBJECT_TYPES or props.get("objectType") != object_type:
            problems.append(f"{where}: objectType {props.get('objectType')!r}, expected {object_type!r}")
        cls = props.get("classification")
        if cls is not None:
            colour = cls.get("color")
            if not isinstance(cls.get("name"), str) or not (
                isinstance(colour, list)
                and len(colour) == 3
                and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
            ):
                problems.append(f"{where}: classification needs a name and an [r, g, b] colour of 0-255")
        meas = props.get("measurements")
        if meas is not None:
            if not isinstance(meas, dict):
                problems.append(f"{where}: measurements is not a name -> number map")
            else:
                for name, value in meas.items():
                    if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
                        problems.append(f"{where}: measurement {name!r} is not a number")
                    elif not math.isfinite(value):
                        problems.append(f"{where}: measurement {name!r} is not finite")
        if len(problems) > 20:
            break
    return problems


def read_ome_zarr_labels(path):
    """The label image of an OME-Zarr store as ome_zarr's reader gives it: (levels, metadata)."""
    from ome_zarr.io import parse_url  # optional: the export extra
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(path)))())
    labels = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert labels, f"ome_zarr finds no label image in {path}"
    return [np.asarray(level) for level in labels[0].data], labels[0].metadata
