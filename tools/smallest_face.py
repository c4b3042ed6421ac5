"""Smallest face the detector finds in a 1280×720 frame: paste real face photos at shrinking sizes into a frame
and record the smallest eye-to-eye distance and box width (pixels) still detected.

    python tools/smallest_face.py --photos tests/data/faces [--detector blazeface_full_range_int8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge.imageio import read_image
from edge.vision.analyzer import FaceAnalyzer, VisionOptions
from edge.vision.detector import iou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--frame", default="1280x720")
    args = ap.parse_args()
    fw, fh = (int(v) for v in args.frame.split("x"))
    analyzer = FaceAnalyzer.create(VisionOptions(detector=args.detector))
    rng = np.random.default_rng(0)
    results = []
    for path in sorted(args.photos.glob("*.jpg")):
        rgb = read_image(path)
        dets = analyzer.detect(rgb)
        if not dets:
            continue
        ref = max(dets, key=lambda d: d.width)
        smallest = None
        for width in range(200, 8, -4):  # target box width in the frame, pixels
            s = width / ref.width
            small = cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))),
                               interpolation=cv2.INTER_AREA)
            if small.shape[0] > fh or small.shape[1] > fw:
                continue
            frame = np.full((fh, fw, 3), 110, np.uint8) + rng.integers(0, 20, (fh, fw, 3), dtype=np.uint8)
            x, y = (fw - small.shape[1]) // 2, (fh - small.shape[0]) // 2
            frame[y:y + small.shape[0], x:x + small.shape[1]] = small
            expected = np.array(ref.box) * s + np.array([x, y, x, y])
            found = [d for d in analyzer.detect(frame) if iou(expected, np.array([d.box]))[0] > 0.5]
            if found:
                smallest = (width, found[0].eye_distance)
            else:
                break
        if smallest:
            results.append(smallest)
            print(f"{path.name:28s} smallest detected: box {smallest[0]} px wide, eyes {smallest[1]:.1f} px apart")
    if results:
        widths = [r[0] for r in results]
        print(f"{analyzer.detector_info.name}, {fw}×{fh} frame: smallest box width median {np.median(widths):.0f} px, "
              f"max {max(widths)} px over {len(widths)} faces")


if __name__ == "__main__":
    main()
