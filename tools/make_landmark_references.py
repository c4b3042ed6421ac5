"""Write tests/data/reference_landmarks5.json: what real dlib says about the committed test photos, so
tests/test_landmarks.py can check `edge.vision.landmarks` without dlib.

For every face dlib's HOG detector finds (upsample 1, as face_recognition) in tests/data/faces/*.jpg:
- the HOG rectangle and dlib's 5 landmarks in it, plus dlib's landmarks in three shifted / scaled rectangles;
- the default (int8) BlazeFace detection of the same face (box, keypoints), so the seeding test is deterministic;
- the sha256 of dlib's own chip (``dlib.get_face_chip(img, shape, 150, 0.25)``) and dlib's descriptor of it.

Run in the tools venv (dlib-bin==20.0.1.post1, face_recognition_models==0.3.0, this package installed):

    python tools/make_landmark_references.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dlib
import face_recognition_models
import numpy as np

from edge.imageio import read_image
from edge.vision.analyzer import FaceAnalyzer
from edge.vision.detector import iou

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
#: Extra rectangles per face as (dx, dy, grow) in fractions of the HOG rect's width.
JITTER = ((0.05, -0.04, 0.0), (-0.03, 0.06, 0.15), (0.02, 0.02, -0.12))


def _points(shape: "dlib.full_object_detection") -> list[list[int]]:
    return [[p.x, p.y] for p in shape.parts()]


def main() -> None:
    models = Path(face_recognition_models.__file__).parent / "models"
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    hog = dlib.get_frontal_face_detector()
    analyzer = FaceAnalyzer.create()
    faces = []
    for path in sorted((DATA / "faces").glob("*.jpg")):
        rgb = read_image(path)
        dets = analyzer.detect(rgb)
        for rect in hog(rgb, 1):
            box = [rect.left(), rect.top(), rect.right(), rect.bottom()]
            shape = sp(rgb, rect)
            chip = dlib.get_face_chip(rgb, shape, 150, 0.25)
            jittered = []
            w = rect.right() - rect.left() + 1
            for dx, dy, grow in JITTER:
                g = round(grow * w / 2)
                r = dlib.rectangle(rect.left() + round(dx * w) - g, rect.top() + round(dy * w) - g,
                                   rect.right() + round(dx * w) + g, rect.bottom() + round(dy * w) + g)
                jittered.append({"rect": [r.left(), r.top(), r.right(), r.bottom()], "points": _points(sp(rgb, r))})
            face = {"image": f"faces/{path.name}", "rect": box, "points": _points(shape), "jittered": jittered,
                    "chip_sha256": hashlib.sha256(np.ascontiguousarray(chip).tobytes()).hexdigest(),
                    "dlib_descriptor": [round(float(v), 6) for v in rec.compute_face_descriptor(chip)]}
            overlap = iou(np.array(box, np.float64), np.array([d.box for d in dets], np.float64)) if dets else [0.0]
            if max(overlap) >= 0.3:
                best = dets[int(np.argmax(overlap))]
                face["blazeface"] = {"box": [round(float(v), 3) for v in best.box],
                                     "keypoints": np.round(best.keypoints.astype(np.float64), 3).tolist()}
            faces.append(face)
            print(f"{path.name}: rect {box}, BlazeFace match: {'blazeface' in face}")
    meta = {"generator": "tools/make_landmark_references.py", "dlib": dlib.__version__,
            "predictor": "face_recognition_models 0.3.0 shape_predictor_5_face_landmarks.dat",
            "hog_upsample": 1, "detector": analyzer.detector_info.name,
            "detector_sha256": analyzer.detector_info.sha256}
    out = DATA / "reference_landmarks5.json"
    out.write_text(json.dumps({"meta": meta, "faces": faces}, separators=(",", ":")) + "\n")
    print(f"{out.relative_to(ROOT)}: {len(faces)} faces, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
