"""Fit the BlazeFace → dlib chip alignment template, and measure how close our chips come to dlib's own.

For every single-face dev photo, dlib (HOG detector + the CC0 5-point landmark model) gives the 150×150,
padding-0.25 chip its ResNet descriptor was trained on, and the affine map image → chip. BlazeFace keypoints of
the same face, mapped through it, land where the template should put them. The template is their mean over the
fitting half of the photos; the other half measures, for several keypoint subsets, the cosine between dlib's
descriptor of our chip and dlib's descriptor of dlib's own chip.

Run in the tools venv (dlib-bin==20.0.1.post1, face_recognition_models==0.3.0, with this package installed):

    python tools/fit_alignment.py --data ../shared/data --detector models/blazeface_full_range_float32.tflite \
        --out /tmp/alignment.json

Prints the template as a Python literal for `edge/vision/align.py` and the measured cosines.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import cv2
import dlib
import face_recognition_models
import numpy as np

from edge.vision.align import align_face
from edge.vision.detector import FaceDetector, iou
from edge.vision.runtime import load_model

SETS = ("deepface", "face_recognition", "facenet_pytorch")


def photos(data: Path) -> list[tuple[Path, str]]:
    """(path, identity) of the single-face photos of the dev sets, without byte duplicates."""
    out = []
    for name in SETS:
        with open(data / name / "manifest.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if (row.get("faces", "single") != "single" or row.get("byte_duplicate_of")
                        or row.get("kind", "raw") != "raw"):
                    continue
                out.append((data / name / row["path"], row["identity"]))
    return out


def mapping_to_chip(details: "dlib.chip_details") -> np.ndarray:
    """dlib's get_mapping_to_chip: 2×3 affine image → chip, from the chip's rotated rectangle."""
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    a = details.angle
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    def turn(x: float, y: float) -> np.ndarray:
        return rot @ np.array([x - cx, y - cy]) + np.array([cx, cy])

    src = np.float32([turn(r.left(), r.top()), turn(r.right(), r.top()), turn(r.right(), r.bottom())])
    dst = np.float32([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]])
    return cv2.getAffineTransform(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the shared dev data folder")
    ap.add_argument("--detector", type=Path, required=True, help="float BlazeFace full-range model (RGB 0..255 input)")
    ap.add_argument("--original", action="store_true", help="the detector is the package's original ([-1,1] input)")
    ap.add_argument("--out", type=Path, help="write the template and measurements as JSON here")
    args = ap.parse_args()

    models = Path(face_recognition_models.__file__).parent / "models"
    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    model = load_model(args.detector)
    if args.original:
        run = model.run
        model.run = lambda x: run(x.astype(np.float32) / 127.5 - 1.0)  # type: ignore[method-assign]
    det = FaceDetector(model, "full_range")

    samples = []
    for path, ident in photos(args.data):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        rects = hog(rgb, 1)
        if len(rects) != 1:
            continue
        shape = sp(rgb, rects[0])
        details = dlib.get_face_chip_details(shape, 150, 0.25)
        m = mapping_to_chip(details)
        dlib_chip = np.asarray(dlib.get_face_chip(rgb, shape, 150, 0.25))
        dets = det.detect(rgb)
        r = rects[0]
        box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64)
        matches = [d for d in dets if iou(box, np.array([d.box])) [0] > 0.3]
        if not matches:
            continue
        kps = matches[0].keypoints.astype(np.float64)
        in_chip = kps @ m[:, :2].T + m[:, 2]
        samples.append({"path": str(path), "identity": ident, "rgb": rgb, "kps": kps, "chip_kps": in_chip,
                        "dlib_chip": dlib_chip, "dlib_desc": np.asarray(rec.compute_face_descriptor(dlib_chip)),
                        "map": m})
    print(f"{len(samples)} photos with one dlib face and a matching BlazeFace detection")

    # Sanity check of the mapping: dlib's chip vs our warp of the same rectangle.
    s0 = samples[0]
    ours = cv2.warpAffine(s0["rgb"], s0["map"], (150, 150), flags=cv2.INTER_LINEAR)
    print(f"mapping check: mean |dlib chip − warp| = {np.abs(ours.astype(float) - s0['dlib_chip']).mean():.2f} "
          "grey levels")

    fit = samples[0::2]
    held = samples[1::2]
    template = np.mean([s["chip_kps"] for s in fit], axis=0)
    spread = np.std([s["chip_kps"] for s in fit], axis=0)

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    subsets = {
        "eyes+nose+mouth": [1, 1, 1, 1, 0, 0],
        "all six": [1, 1, 1, 1, 1, 1],
        "eyes+mouth": [1, 1, 0, 1, 0, 0],
        "eyes+nose+mouth, ears 0.25": [1, 1, 1, 1, 0.25, 0.25],
    }
    results = {}
    for name, weights in subsets.items():
        w = np.array(weights, np.float32)
        # Refit the template with this subset's weights: the mean position is the same, the fit differs.
        cos = []
        for s in held:
            chip = align_face(s["rgb"], s["kps"].astype(np.float32), 150, template.astype(np.float32), w)
            cos.append(cosine(np.asarray(rec.compute_face_descriptor(chip)), s["dlib_desc"]))
        results[name] = {"min": min(cos), "median": float(np.median(cos)), "mean": float(np.mean(cos))}
        print(f"{name:28s} held-out cosine(dlib(our chip), dlib(dlib chip)): min {min(cos):.4f} "
              f"median {np.median(cos):.4f} mean {np.mean(cos):.4f} (n={len(cos)})")

    # Reference: the same-person cosine scale (how far apart two photos of one person are).
    print("template (chip pixels):")
    print(np.array2string(template, precision=2, separator=", "))
    print("spread (std, chip pixels):")
    print(np.array2string(spread, precision=2, separator=", "))
    if args.out:
        args.out.write_text(json.dumps({
            "n_fit": len(fit), "n_heldout": len(held),
            "template": np.round(template, 2).tolist(), "spread": np.round(spread, 2).tolist(),
            "heldout_cosine_vs_dlib_chip": results,
        }, indent=2))


if __name__ == "__main__":
    main()
