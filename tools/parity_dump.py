"""Dev-time parity probe (issue 14): the int8 detector's boxes and scores and the default analyzer's embeddings for
every JPEG in a folder, saved to an .npz — run once on x86 and once inside an arm64 root (tools/test_arm64_qemu.sh),
then `python tools/parity_dump.py --compare x86.npz arm64.npz`.

    python tools/parity_dump.py FOLDER OUT.npz
    python tools/parity_dump.py --compare A.npz B.npz
"""
import sys
from pathlib import Path

import numpy as np

from edge.imageio import read_image
from edge.vision.analyzer import FaceAnalyzer, VisionOptions



def iou(p: np.ndarray, q: np.ndarray) -> float:
    x0, y0, x1, y1 = max(p[0], q[0]), max(p[1], q[1]), min(p[2], q[2]), min(p[3], q[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return float(inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter))


def compare(path_a: str, path_b: str) -> None:
    a, b = np.load(path_a), np.load(path_b)
    ious, scores, cos1, cos2 = [], [], [], []
    for k in sorted(a.files):
        if k.endswith(":boxes"):
            A, B = a[k], b[k]
            if len(A) != len(B):
                print(f"{k}: {len(A)} faces vs {len(B)}")
            for i in range(min(len(A), len(B))):
                ious.append(iou(A[i], B[i]))
                scores.append(abs(float(A[i][4] - B[i][4])))
        elif k in b.files:
            (cos1 if k.endswith(":emb") else cos2).append(float(a[k] @ b[k]))
    print(f"faces matched {len(ious)}: box IoU min {min(ious):.4f} median {np.median(ious):.4f}; detector score"
          f" |diff| max {max(scores):.4f}")
    print(f"primary embedding cosine min {min(cos1):.5f} median {np.median(cos1):.5f}")
    if cos2:
        print(f"fused second embedding cosine min {min(cos2):.5f} median {np.median(cos2):.5f}")


if sys.argv[1] == "--compare":
    compare(sys.argv[2], sys.argv[3])
    sys.exit(0)
folder, out = Path(sys.argv[1]), sys.argv[2]
a = FaceAnalyzer.create(VisionOptions(threads=1))
rows = {}
for p in sorted(folder.glob("*.jpg")):
    rgb = read_image(p)
    dets = a.detect(rgb)
    if not dets:
        rows[p.name + ":boxes"] = np.zeros((0, 5), np.float32)
        continue
    rows[p.name + ":boxes"] = np.array([list(d.box) + [d.score] for d in dets], np.float32)
    face = a.embed(rgb, dets[0])
    rows[p.name + ":emb"] = face.embedding
    if face.embedding2 is not None:
        rows[p.name + ":emb2"] = face.embedding2
np.savez(out, **rows)
print("dumped", len(rows), "arrays from", folder)
