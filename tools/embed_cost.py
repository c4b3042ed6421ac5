"""Per-face cost of each embedding configuration, side by side in one run: landmarks + alignment + embedding
(+ mirror, + second embedder), milliseconds, at 1 and 2 interpreter threads (detection is the same for all and not
counted). Faces: the bundled photos (tests/data/faces), each face embedded `--repeat` times, the configurations
interleaved round by round; the median is reported.

    python tools/embed_cost.py [--repeat 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from edge.imageio import read_image
from edge.vision.analyzer import FaceAnalyzer, VisionOptions

FACES = Path(__file__).resolve().parent.parent / "tests" / "data" / "faces"

#: name → VisionOptions keyword arguments.
CONFIGS = {
    "dlib int8 + flip": dict(embedder="dlib_resnet_v1_int8", alignment="dlib5", fusion=False, flip=True),
    "dlib int8 + flip + faceres fused (former default)": dict(embedder="dlib_resnet_v1_int8", alignment="dlib5",
                                                               fusion=True, flip=True),
    "MobileFaceNet (ONet)": dict(embedder="mobilefacenet_float32", alignment="onet", flip=False),
    "MobileFaceNet + flip (ONet)": dict(embedder="mobilefacenet_float32", alignment="onet", flip=True),
    "MobileFaceNet + flip (BlazeFace keypoints)": dict(embedder="mobilefacenet_float32", alignment="keypoints",
                                                       flip=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    photos = [read_image(p) for p in sorted(FACES.glob("*.jpg"))]
    # Every configuration is loaded first and the rounds interleave them, so a slow spell of this (shared) machine
    # hits all of them alike: compare within a run.
    setups = {}
    for name, kw in CONFIGS.items():
        for threads in (1, 2):
            analyzer = FaceAnalyzer.create(VisionOptions(threads=threads, **kw))
            faces = [(rgb, d) for rgb in photos for d in analyzer.detect(rgb)]
            for rgb, d in faces[:3]:  # warm-up
                analyzer.embed(rgb, d)
            setups[name, threads] = (analyzer, faces, [])
    for _ in range(args.repeat):
        for analyzer, faces, times in setups.values():
            for rgb, d in faces:
                t0 = time.perf_counter()
                analyzer.embed(rgb, d)
                times.append((time.perf_counter() - t0) * 1e3)
    rows = []
    for name in CONFIGS:
        row = {"config": name, "faces": len(setups[name, 1][1])}
        for threads in (1, 2):
            row[f"ms_per_face_{threads}_thread{'s' if threads > 1 else ''}"] = round(
                statistics.median(setups[name, threads][2]), 2)
        rows.append(row)
        if not args.json:
            print(f"{name:52s} {row['ms_per_face_1_thread']:7.2f} ms (1 thread) {row['ms_per_face_2_threads']:7.2f} ms "
                  f"(2 threads), {row['faces']} faces x {args.repeat}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
