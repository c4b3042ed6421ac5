"""Convert dlib's 5-point face landmark model to plain numpy arrays, and measure the numpy re-implementation.

Reads ``shape_predictor_5_face_landmarks.dat`` (CC0, Davis King) from the installed ``face_recognition_models``
package and writes ``models/dlib_shape_predictor_5.npz`` for `edge.vision.landmarks`. Never point it at the
68-point file: that one is not licensed for this use.

dlib serializes a ``shape_predictor`` (dlib/image_processing/shape_predictor.h) as: version (1); the initial shape
(a ``matrix<float,0,1>``: rows and cols written negated, then every element as a float); the forests
(``vector<vector<regression_tree>>``, each tree = its splits ``{idx1, idx2, thresh}`` then its leaf vectors); the
anchor index of every feature pixel per cascade; and the pixel deltas (``vector<float,2>`` = x, y) per cascade.
The primitive encodings (integers, floats as mantissa·2^exponent) are the ones `tools/dlib_dat.py` reads.

Run in the tools venv (dlib-bin==20.0.1.post1, face_recognition_models==0.3.0, this package installed):

    python tools/convert_shape_predictor.py                                # write the npz, print sha256 / size
    python tools/convert_shape_predictor.py --parity DIR [DIR ...]        # numpy vs dlib on dlib's HOG rectangles
    python tools/convert_shape_predictor.py --collect DIR [DIR ...] --cache /tmp/faces.npz [--limit N]
    python tools/convert_shape_predictor.py --fit-rect /tmp/fit.npz       # BlazeFace -> HOG rect constants
    python tools/convert_shape_predictor.py --evaluate /tmp/heldout.npz   # landmark error, chip cosines, timings

--collect pairs every dlib HOG face (upsample 1, as face_recognition) with the default (int8) BlazeFace detection
of the same face and caches both with dlib's landmarks (keep the cache outside the repo: it names dev photos).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlib_dat import DlibFormatError, _Reader  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "dlib_shape_predictor_5.npz"
SOURCE = "face_recognition_models/models/shape_predictor_5_face_landmarks.dat"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def source_path() -> Path:
    """The .dat inside the installed face_recognition_models package."""
    import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models" / "shape_predictor_5_face_landmarks.dat"


def _column(r: _Reader) -> np.ndarray:
    nr, nc = r.integer(), r.integer()
    nr, nc = abs(nr), abs(nc)  # dlib writes the dims negated (new format marker)
    if nc != 1:
        raise DlibFormatError(f"expected a column vector, got {nr}x{nc}")
    return np.array([r.scalar() for _ in range(nr)], np.float64)


def parse_shape_predictor(path: Path, leaf_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Parse the .dat into the arrays `edge.vision.landmarks.ShapePredictor` loads (see its docstring)."""
    r = _Reader(path.read_bytes())
    if r.integer() != 1:
        raise DlibFormatError("unexpected shape_predictor version")
    initial = _column(r)
    idx, thresh, leaves = [], [], []
    for _ in range(r.integer()):  # cascades
        c_idx, c_thr, c_leaf = [], [], []
        for _ in range(r.integer()):  # trees
            splits = [(r.integer(), r.integer(), r.scalar()) for _ in range(r.integer())]
            leaf = [_column(r) for _ in range(r.integer())]
            if len(leaf) != len(splits) + 1:
                raise DlibFormatError("tree is not complete")
            c_idx.append([(a, b) for a, b, _ in splits])
            c_thr.append([t for _, _, t in splits])
            c_leaf.append(leaf)
        idx.append(c_idx), thresh.append(c_thr), leaves.append(c_leaf)
    anchors = [[r.integer() for _ in range(r.integer())] for _ in range(r.integer())]
    deltas = [[(r.scalar(), r.scalar()) for _ in range(r.integer())] for _ in range(r.integer())]
    if r.pos != len(r.data):
        raise DlibFormatError(f"{len(r.data) - r.pos} trailing bytes")
    thr = np.array(thresh, np.float32)
    # Feature differences are integers (pixel intensities), so `diff > t` == `diff > floor(t)`: exact in int16.
    thr_int = np.floor(thr)
    if np.abs(thr_int).max() > 32767:
        raise DlibFormatError("threshold out of int16 range")
    n_parts = initial.size // 2
    leaf_arr = np.array(leaves, np.float32)
    return {
        "initial_shape": initial.reshape(n_parts, 2).astype(np.float32),
        "split_idx": np.array(idx, np.uint16),
        "split_thresh": thr_int.astype(np.int16),
        "leaves": leaf_arr.reshape(*leaf_arr.shape[:3], n_parts, 2).astype(leaf_dtype),
        "anchor": np.array(anchors, np.uint8),
        "deltas": np.array(deltas, np.float32),
    }


def write_npz(arrays: dict[str, np.ndarray], out: Path) -> str:
    """Write the arrays (compressed) and return the file's sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _images(dirs: list[Path]) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def parity(npz: Path, dirs: list[Path], limit: int) -> None:
    """numpy vs dlib's own predictor on dlib's HOG rectangles (upsample 1, as face_recognition does)."""
    import dlib

    from edge.imageio import read_image
    from edge.vision.landmarks import load_shape_predictor

    ref = dlib.shape_predictor(str(source_path()))
    hog = dlib.get_frontal_face_detector()
    ours = load_shape_predictor(npz)
    errs, exact, faces, times = [], 0, 0, []
    for path in _images(dirs)[:limit]:
        rgb = read_image(path)
        for rect in hog(rgb, 1):
            want = np.array([(p.x, p.y) for p in ref(rgb, rect).parts()], np.float64)
            box = (rect.left(), rect.top(), rect.right(), rect.bottom())
            t0 = time.perf_counter()
            got = ours.predict(rgb, box)
            times.append(time.perf_counter() - t0)
            err = np.linalg.norm(np.floor(got + 0.5) - want, axis=1)  # dlib rounds its parts to whole pixels
            errs.append(err)
            exact += bool(err.max() == 0)
            faces += 1
    e = np.concatenate(errs) if errs else np.zeros(1)
    print(f"{faces} faces: landmark error px mean {e.mean():.4f} max {e.max():.2f}; "
          f"identical on {exact}/{faces} faces; predict median {1e3 * np.median(times):.2f} ms")


def collect(dirs: list[Path], limit: int, cache: Path) -> None:
    """Cache, per face found by both detectors: photo path, HOG rect, dlib's 5 points, BlazeFace box/keypoints."""
    import dlib

    from edge.imageio import read_image
    from edge.vision.analyzer import FaceAnalyzer
    from edge.vision.detector import iou

    ref = dlib.shape_predictor(str(source_path()))
    hog = dlib.get_frontal_face_detector()
    analyzer = FaceAnalyzer.create()
    rows: dict[str, list] = {k: [] for k in ("path", "rect", "points", "box", "keypoints")}
    for path in _images(dirs)[:limit]:
        rgb = read_image(path)
        dets = analyzer.detect(rgb)
        for rect in hog(rgb, 1):
            box = (rect.left(), rect.top(), rect.right(), rect.bottom())
            if not dets:
                continue
            overlap = iou(np.array(box, np.float64), np.array([d.box for d in dets], np.float64))
            if overlap.max() < 0.3:
                continue
            best = dets[int(overlap.argmax())]
            rows["path"].append(str(path))
            rows["rect"].append(box)
            rows["points"].append([(p.x, p.y) for p in ref(rgb, rect).parts()])
            rows["box"].append(best.box)
            rows["keypoints"].append(best.keypoints)
    np.savez(cache, **{k: np.array(v) for k, v in rows.items()})
    print(f"{len(rows['path'])} faces from {len(set(rows['path']))} photos -> {cache}")


def _detections(z: dict) -> list:
    from edge.types import Detection

    return [Detection(tuple(b), 1.0, k.astype(np.float32)) for b, k in zip(z["box"], z["keypoints"], strict=True)]


def fit_rect(cache: Path) -> None:
    """Least-squares fit of `edge.vision.landmarks.RECT_CENTRE` / `RECT_SIDE` against dlib's HOG rectangles."""
    from edge.vision.landmarks import points_features, rect_features

    z = dict(np.load(cache))
    feats, centre, side = [], [], []
    for det, r in zip(_detections(z), z["rect"].astype(np.float64), strict=True):
        eyes, f, w = rect_features(det)
        feats.append(f)
        centre.append((np.array([(r[0] + r[2]) / 2, (r[1] + r[3]) / 2]) - eyes) / w)
        side.append((r[2] - r[0] + 1) / w)
    f = np.array(feats)
    rc = np.linalg.lstsq(f, np.array(centre), rcond=None)[0].T
    rs = np.linalg.lstsq(f, np.array(side), rcond=None)[0]
    g, pc, ps = [], [], []
    for pts, r in zip(z["points"].astype(np.float64), z["rect"].astype(np.float64), strict=True):
        mid, gf, d = points_features(pts)
        g.append(gf)
        pc.append((np.array([(r[0] + r[2]) / 2, (r[1] + r[3]) / 2]) - mid) / d)
        ps.append((r[2] - r[0] + 1) / d)
    pcc = np.linalg.lstsq(np.array(g), np.array(pc), rcond=None)[0].T
    pss = np.linalg.lstsq(np.array(g), np.array(ps), rcond=None)[0]
    print(f"fitted on {len(f)} faces of {len(set(z['path']))} photos")
    print("POINTS_CENTRE =", np.array2string(pcc, precision=5, separator=", "))
    print("POINTS_SIDE =", np.array2string(pss, precision=5, separator=", "))
    print("RECT_CENTRE =", np.array2string(rc, precision=5, separator=", "))
    print("RECT_SIDE =", np.array2string(rs, precision=5, separator=", "))


def evaluate(cache: Path, npz: Path) -> None:
    """Seeded-from-BlazeFace landmarks and chips vs dlib's own (HOG rect, dlib predictor, dlib.get_face_chip).

    Suffix 1: predicted once in `detection_rect`; 2: re-seeded in `points_rect` of the first prediction; old:
    today's `edge.vision.align.align_face` chip. err: mean landmark distance (px; _rel: / eye-centre distance);
    cos: cosine of dlib's descriptors (compute_face_descriptor) of our chip and dlib's; int8: the same with the
    repo's int8 embedder; t_: ms per call; chip_identical: `dlib_chip` of dlib's points == dlib's chip.
    """
    import dlib

    from edge.imageio import read_image
    from edge.vision.align import align_face
    from edge.vision.analyzer import FaceAnalyzer, VisionOptions
    from edge.vision.landmarks import detection_rect, dlib_chip, load_shape_predictor, points_rect

    models = source_path().parent
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    embedder = FaceAnalyzer.create(VisionOptions(flip=False)).embedder  # one chip in, one embedding out
    ours = load_shape_predictor(npz)
    z = dict(np.load(cache))
    keys = ("err1", "err2", "err1_rel", "err2_rel", "cos1", "cos2", "cos_old", "int8_1", "int8_old",
            "t_predict", "t_chip", "chip_identical")
    stats: dict[str, list] = {k: [] for k in keys}
    last, rgb = "", np.zeros((1, 1, 3), np.uint8)
    for path, det, want, rect in zip(z["path"], _detections(z), z["points"].astype(np.float64), z["rect"], strict=True):
        if path != last:
            last, rgb = path, read_image(path)
        eye_distance = float(np.linalg.norm(want[0:2].mean(axis=0) - want[2:4].mean(axis=0)))
        shape = dlib.full_object_detection(dlib.rectangle(*map(int, rect)), [dlib.point(*map(int, q)) for q in want])
        ref_chip = dlib.get_face_chip(rgb, shape, 150, 0.25)
        stats["chip_identical"].append(float(np.array_equal(ref_chip, dlib_chip(rgb, want))))
        d_ref = np.asarray(rec.compute_face_descriptor(ref_chip))
        e_ref = embedder.embed(ref_chip)
        t0 = time.perf_counter()
        p1 = ours.predict(rgb, detection_rect(det))
        t1 = time.perf_counter()
        p2 = ours.predict(rgb, points_rect(p1))
        t2 = time.perf_counter()
        chip1 = dlib_chip(rgb, p1)
        t3 = time.perf_counter()
        chip2 = dlib_chip(rgb, p2)
        old = align_face(rgb, det.keypoints)
        stats["t_predict"].append(t1 - t0)
        stats["t_chip"].append(t3 - t2)
        for key, p in (("err1", p1), ("err2", p2)):
            err = np.linalg.norm(p - want, axis=1).mean()
            stats[key].append(err)
            stats[key + "_rel"].append(err / eye_distance)
        for key, chip in (("cos1", chip1), ("cos2", chip2), ("cos_old", old)):
            d = np.asarray(rec.compute_face_descriptor(chip))
            stats[key].append(float(d @ d_ref / np.linalg.norm(d) / np.linalg.norm(d_ref)))
        stats["int8_1"].append(float(embedder.embed(chip1) @ e_ref))
        stats["int8_old"].append(float(embedder.embed(old) @ e_ref))
    n = len(stats["err1"])
    print(f"{n} faces of {len(set(z['path']))} photos")
    for key, vals in stats.items():
        v = np.array(vals) * (1e3 if key.startswith("t_") else 1)
        print(f"{key:14s} median {np.median(v):.5f} mean {v.mean():.5f} min {v.min():.5f} "
              f"p5 {np.percentile(v, 5):.5f} p95 {np.percentile(v, 95):.5f} max {v.max():.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--leaves", choices=["float16", "float32"], default="float32",
                    help="leaf dtype: float32 is exact; float16 halves the file but drifts (mean 0.6 px, max 8 px)")
    ap.add_argument("--parity", type=Path, nargs="*", help="photo folders: compare with dlib instead of converting")
    ap.add_argument("--collect", type=Path, nargs="*", help="photo folders: cache matched HOG / BlazeFace faces")
    ap.add_argument("--cache", type=Path, help="where --collect writes its cache")
    ap.add_argument("--fit-rect", type=Path, help="a --collect cache: fit the BlazeFace -> HOG rect constants")
    ap.add_argument("--evaluate", type=Path, help="a --collect cache: measure landmarks and chips vs dlib")
    ap.add_argument("--limit", type=int, default=100000, help="at most this many photos (--parity, --collect)")
    args = ap.parse_args()
    if args.parity:
        parity(args.out, args.parity, args.limit)
        return
    if args.collect:
        collect(args.collect, args.limit, args.cache)
        return
    if args.fit_rect:
        fit_rect(args.fit_rect)
        return
    if args.evaluate:
        evaluate(args.evaluate, args.out)
        return
    arrays = parse_shape_predictor(source_path(), args.leaves)
    sha = write_npz(arrays, args.out)
    print(f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: "
          f"{args.out.stat().st_size} bytes, sha256 {sha}")
    print({k: (v.shape, str(v.dtype)) for k, v in arrays.items()})


if __name__ == "__main__":
    main()
