"""The demo's synthetic clip: listed and unlisted faces cut from *other* bundled photos move, grow and are partly
occluded over a plain background (`edge demo`, `edge bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.imageio import read_image

#: Listed (enrolled) people: gallery photo → label. Probes in the clip are *different* photos of them.
DEMO_GALLERY = {"obama.jpg": "Barack Obama", "biden.jpg": "Joe Biden"}
#: Actors of the generated clip: (photo, enrolled identity or None, enter s, leave s, start x, end x, scale from, to).
DEMO_ACTORS = [
    ("obama2.jpg", "obama.jpg", 0.3, 4.0, 0.10, 0.45, 0.8, 1.1),
    ("astronaut.jpg", None, 1.0, 5.5, 0.70, 0.40, 0.9, 1.2),
    ("obama_partial_face.jpg", "obama.jpg", 4.5, 7.5, 0.55, 0.75, 1.0, 1.2),
    ("obama3.jpg", "obama.jpg", 5.0, 8.0, 0.05, 0.25, 1.1, 1.4),
]


def _face_crop(rgb: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.6) -> np.ndarray:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    xa, ya = int(max(0, x0 - margin * w)), int(max(0, y0 - margin * h))
    xb, yb = int(min(rgb.shape[1], x1 + margin * w)), int(min(rgb.shape[0], y1 + margin * h * 1.5))
    return rgb[ya:yb, xa:xb]


def make_clip(path: Path, photos: Path, analyzer: Any, seconds: float = 8.5, fps: float = 30.0,
              size: tuple[int, int] = (1280, 720)) -> list[dict]:
    """Write an mp4 of the demo actors; returns the actor schedule (who is listed, when visible)."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise EdgeError(f"cannot write the demo clip {path} (OpenCV has no mp4v encoder?)")
    sprites, schedule = [], []
    for name, listed, t0, t1, xa, xb, sa, sb in DEMO_ACTORS:
        rgb = read_image(photos / name)
        dets = analyzer.detect(rgb)
        if not dets:
            raise EdgeError(f"no face in demo photo {photos / name}")
        crop = _face_crop(rgb, max(dets, key=lambda d: d.width).box)
        # Scale so the face is ~170 px wide at scale 1.0 (faces at 2–3 m for a 720p body camera).
        base = 170.0 / max(dets, key=lambda d: d.width).width
        sprites.append((crop, base, t0, t1, xa, xb, sa, sb))
        half = crop.shape[1] * base / 2 / width  # the sprite's half width at scale 1, as a fraction of the frame
        schedule.append({"photo": name, "listed_as": listed, "visible_s": [t0, t1],
                         "center_x": [round(xa + half * sa, 3), round(xb + half * sb, 3)]})
    rng = np.random.default_rng(0)
    background = np.full((height, width, 3), 96, np.uint8)
    background += rng.integers(0, 24, (height, width, 1), dtype=np.uint8)
    for i in range(int(seconds * fps)):
        t = i / fps
        frame = background.copy()
        for crop, base, t0, t1, xa, xb, sa, sb in sprites:
            if not t0 <= t <= t1:
                continue
            u = (t - t0) / (t1 - t0)
            s = base * (sa + (sb - sa) * u)
            sprite = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            sh, sw = sprite.shape[:2]
            x = int((xa + (xb - xa) * u) * width)
            y = int(height * 0.45 - sh / 2)
            x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + sw), min(height, y + sh)
            if x1 > x0 and y1 > y0:
                frame[y0:y1, x0:x1] = sprite[y0 - y:y1 - y, x0 - x:x1 - x]
        # A passing occluder (a pole) covers part of the scene now and then.
        px = int((t * 0.25 % 1.0) * width)
        frame[:, px:px + 40] = 40
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return schedule
