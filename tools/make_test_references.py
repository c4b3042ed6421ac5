"""Write the reference data the tests compare the shipped models against, so CI needs neither TensorFlow nor dlib.

For every photo in tests/data/faces/:
- golden detections from the float32 full-range BlazeFace (the int8 detector's reference);
- the aligned 150×150 chip of the largest face (lossless PNG in tests/data/chips/) and dlib's own descriptor of
  that chip (`dlib.face_recognition_model_v1.compute_face_descriptor`), the int8 and float32 embedders' reference.

Run in the tools venv (dlib-bin==20.0.1.post1, face_recognition_models==0.3.0, this package installed):

    python tools/make_test_references.py
"""

from __future__ import annotations

import json
from pathlib import Path

import dlib
import face_recognition_models
import numpy as np

from edge.imageio import read_image, write_image
from edge.vision.analyzer import FaceAnalyzer, VisionOptions

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def main() -> None:
    rec = dlib.face_recognition_model_v1(
        str(Path(face_recognition_models.__file__).parent / "models" / "dlib_face_recognition_resnet_model_v1.dat"))
    analyzer = FaceAnalyzer.create(VisionOptions(
        detector="blazeface_full_range_float32", embedder="dlib_resnet_v1_float32", threads=2))
    (DATA / "chips").mkdir(exist_ok=True)
    golden, embeddings = {}, {}
    for path in sorted((DATA / "faces").glob("*.jpg")):
        rgb = read_image(path)
        dets = analyzer.detect(rgb)
        golden[path.name] = [d.to_json() for d in dets]
        if not dets:
            continue
        face = analyzer.embed(rgb, max(dets, key=lambda d: d.width * d.height))
        chip_path = DATA / "chips" / f"{path.stem}.png"
        write_image(chip_path, face.chip)
        chip = read_image(chip_path)
        assert np.array_equal(chip, face.chip)
        ref = np.asarray(rec.compute_face_descriptor(chip), np.float64)
        embeddings[path.stem] = {"chip": f"chips/{path.stem}.png", "dlib_descriptor": [round(float(v), 7) for v in ref]}
        print(f"{path.name}: {len(dets)} face(s); |dlib descriptor| = {np.linalg.norm(ref):.4f}")
    meta = {"generator": "tools/make_test_references.py", "dlib": dlib.__version__,
            "detector": analyzer.detector_info.name, "detector_sha256": analyzer.detector_info.sha256}
    (DATA / "golden_detections.json").write_text(json.dumps({"meta": meta, "images": golden}, indent=1) + "\n")
    (DATA / "reference_embeddings.json").write_text(json.dumps({"meta": meta, "faces": embeddings}, indent=1) + "\n")


if __name__ == "__main__":
    main()
