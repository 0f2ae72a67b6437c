"""An IU X-ray check tree: the REAL report collection with synthetic images, to run params-iu.yaml end to end
where the IU images are not at hand.

    python benchmarks/iu_synthetic_images.py NLMCXR_reports.tgz /tmp/iu
    # then params-iu.yaml with data.root /tmp/iu/png, data.projections /tmp/iu/indiana_projections.csv

For every parentImage id of every report: a 128 px PNG named as NLMCXR_png names it; the first image of a
report is listed Frontal in a projections table (uid, filename, projection), the others Lateral (the real
table says which is which; this one is made up). Each frontal image carries one bright blob per positive
MeSH-mapped label at a label-specific place, so the labels are learnable from the pixels; the report text is
real, the images are not: a check of the path, not of the method. Never commit the output (CC BY-NC-ND).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cxrpipe.data.iuxray import iter_iu_reports
from cxrpipe.labels import CHEXPERT_LABELS

SIZE = 128


def main(reports: Path, out: Path, seed: int = 0) -> int:
    (out / "png").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    spots = {j: (0.2 + 0.6 * ((j * 5) % 7) / 6, 0.2 + 0.6 * ((j * 3) % 5) / 4) for j in range(len(CHEXPERT_LABELS))}
    rows = []
    for rep in iter_iu_reports(reports):
        for k, image_id in enumerate(rep.image_ids):
            img = 0.35 + 0.05 * rng.standard_normal((SIZE, SIZE))
            if k == 0:
                for j, v in enumerate(rep.labels):
                    if v == 1.0 and CHEXPERT_LABELS[j] != "No Finding":
                        cy, cx = spots[j]
                        img += 0.4 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / 0.004))
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out / "png" / f"{image_id}.png")
            rows.append((rep.uid.removeprefix("CXR"), f"{image_id}.png", "Frontal" if k == 0 else "Lateral"))
    with open(out / "indiana_projections.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "filename", "projection"])
        w.writerows(rows)
    print(f"{len(rows)} images -> {out}")
    return len(rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
