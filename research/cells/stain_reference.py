"""The reference stain vectors and maxima of ``napari_uam.radiomics.stain_norm``.

    python -m research.cells.stain_reference

Medians of the per-image Macenko estimates over every image of every cell source (each
source weighted equally, so that the 90-image BRCA-M2C does not set the reference alone).
"""

from __future__ import annotations

import numpy as np

from napari_uam.radiomics.stain_norm import estimate_stains

from .sources import SOURCES, images, read_image


def main() -> int:
    per_source = []
    for s in SOURCES:
        rows = []
        for ci in images(s):
            e = estimate_stains(read_image(ci))
            if e.ok:
                rows.append(np.r_[e.stains.ravel(), e.max_conc])
        if rows:
            med = np.median(np.array(rows), axis=0)
            per_source.append(med)
            print(s, len(rows), np.round(med, 4).tolist())
    ref = np.median(np.array(per_source), axis=0)
    h, e = ref[:3] / np.linalg.norm(ref[:3]), ref[3:6] / np.linalg.norm(ref[3:6])
    print("REF_STAINS =", np.round([h, e], 4).tolist())
    print("REF_MAX =", np.round(ref[6:], 4).tolist())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
