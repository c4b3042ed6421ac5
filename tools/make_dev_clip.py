"""Assemble a test clip from dev photos (never committed): listed and unlisted CelebA people appear one after
another, frontal, moving slowly, 1280×720 mp4 (lossy, like camera footage), with a 14-person gallery of whom
`--present` appear. Prints the `edge demo` command that runs it and writes the schedule as JSON.

    python tools/make_dev_clip.py --data ../shared/data --cache /work/cache/blaze.npz --out /work/cache/devclip
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from edge.imageio import read_image


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="tools/devset.py embed cache (for face sizes and pose)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gallery-size", type=int, default=14)
    ap.add_argument("--present", type=int, default=6, help="listed people who appear")
    ap.add_argument("--unlisted", type=int, default=4, help="unlisted people who appear")
    ap.add_argument("--seconds-each", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    c = np.load(args.cache)
    d = np.load(args.cache.parent / "dets.npz")
    good = defaultdict(list)
    for i, (s, ident) in enumerate(zip(c["set"], c["identity"], strict=True)):
        if s == "celeba_wild" and c["chosen"][i] == 0 and d["ndet"][i] == 1 and c["eye"][i] >= 35 \
                and abs(c["yaw"][i]) < 0.25 and c["sharp"][i] >= 0.5:
            good[str(ident)].append(i)
    people = sorted(k for k, v in good.items() if len(v) >= 2)
    rng = np.random.default_rng(args.seed)
    rng.shuffle(people)
    listed = people[:args.gallery_size]
    unlisted = people[args.gallery_size:args.gallery_size + args.unlisted]
    actors = [(p, True) for p in listed[:args.present]] + [(p, False) for p in unlisted]
    rng.shuffle(actors)
    args.out.mkdir(parents=True, exist_ok=True)
    fps, (width, height) = 25.0, (1280, 720)
    writer = cv2.VideoWriter(str(args.out / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    schedule, t = [], 0.5
    background = np.full((height, width, 3), 90, np.uint8)
    frames = []
    for ident, is_listed in actors:
        i = good[ident][1]  # a different photo from the gallery's (good[ident][0])
        rgb = read_image(args.data / str(c["path"][i]))
        scale = min(1.2, 90.0 / float(c["eye"][i]))  # eye distance ≤ 90 px, never upscaled more than 1.2×
        sprite = cv2.resize(rgb, None, fx=scale, fy=scale,
                            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        schedule.append({"identity": ident, "listed": is_listed, "photo": str(c["path"][i]),
                         "visible_s": [round(t, 2), round(t + args.seconds_each, 2)],
                         "eye_distance_px": round(float(c["eye"][i]) * scale, 1)})
        frames.append((sprite, t, t + args.seconds_each))
        t += args.seconds_each + 0.4
    n = int((t + 0.5) * fps)
    for k in range(n):
        now = k / fps
        frame = background.copy()
        for sprite, t0, t1 in frames:
            if t0 <= now <= t1:
                u = (now - t0) / (t1 - t0)
                sh, sw = sprite.shape[:2]
                x = int((0.2 + 0.25 * u) * width - sw / 2 + width * 0.15)
                y = int(height / 2 - sh / 2)
                x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + sw), min(height, y + sh)
                frame[y0:y1, x0:x1] = sprite[y0 - y:y1 - y, x0 - x:x1 - x]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    gallery = [f"{args.data / str(c['path'][good[p][0]])}={p}" for p in listed]
    (args.out / "schedule.json").write_text(json.dumps({"gallery": gallery, "appearances": schedule}, indent=2))
    print(f"{args.out / 'clip.mp4'}: {len(actors)} appearances ({args.present} listed of {len(listed)}), {n} frames")
    print("edge demo --video " + shlex.quote(str(args.out / "clip.mp4")) + " --gallery "
          + " ".join(map(shlex.quote, gallery)))


if __name__ == "__main__":
    sys.exit(main())
