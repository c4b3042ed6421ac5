"""Side by side, in one run: our int8 pipeline vs dlib's own (the `face_recognition` library) — accuracy on the
same pairs, and latency per face and per frame.

dlib's pipeline: HOG detector (1 upsample), the CC0 5-point landmarks, 150×150 chips with padding 0.25, the float
ResNet descriptor; its similarity here is −(Euclidean distance), so every metric is computed the same way as ours
(accuracy at the best threshold, 10-fold accuracy, TAR at FAR = 1e-3).

Run in the tools venv (dlib-bin==20.0.1.post1, face_recognition==1.3.0 --no-deps, face_recognition_models==0.3.0,
this package installed):

    python tools/compare_face_recognition.py pairs --pairs ../shared/data/dlib_johns/pairs.csv \
        --root ../shared/data/dlib_johns
    python tools/compare_face_recognition.py latency --image ../shared/data/face_recognition/examples/obama-720p.jpg
    python tools/compare_face_recognition.py clip --video ../shared/data/video/hamilton_short_clip.mp4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import face_recognition
import numpy as np

from edge.evaluation.pairs import read_pairs, verification_report
from edge.imageio import read_image
from edge.vision.analyzer import FaceAnalyzer, VisionOptions


def dlib_embedding(path: Path) -> np.ndarray | None:
    """face_recognition's descriptor of the largest HOG face, or None."""
    rgb = read_image(path)
    boxes = face_recognition.face_locations(rgb, number_of_times_to_upsample=1, model="hog")
    if not boxes:
        return None
    box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
    return face_recognition.face_encodings(rgb, [box], num_jitters=1, model="small")[0]


def cmd_pairs(args: argparse.Namespace) -> dict:
    pairs = read_pairs(args.pairs, args.root)
    paths = sorted({p for pair in pairs for p in (pair.a, pair.b)})
    results = {}
    variants = {"edge int8, keypoint chips": VisionOptions(threads=2, flip=False, alignment="keypoints"),
                "edge int8, dlib5 chips": VisionOptions(threads=2, flip=False, alignment="dlib5"),
                "edge int8, dlib5 + flip": VisionOptions(threads=2, flip=True, alignment="dlib5")}
    for name, opts in variants.items():
        analyzer = FaceAnalyzer.create(opts)
        t0 = time.perf_counter()
        emb = {}
        for p in paths:
            face = analyzer.best_face(read_image(p))
            emb[p] = None if face is None else face.embedding
        results[name] = _score(pairs, emb, lambda a, b: float(a @ b), time.perf_counter() - t0)
    t0 = time.perf_counter()
    emb = {p: dlib_embedding(p) for p in paths}
    results["face_recognition (dlib)"] = _score(pairs, emb, lambda a, b: -float(np.linalg.norm(a - b)),
                                                time.perf_counter() - t0)
    for name, r in results.items():
        print(f"{name:26s} accuracy {r['accuracy']:.4f}  10-fold {r['accuracy_10fold_mean']:.4f}  "
              f"TAR@FAR=1e-3 {r['tar_at_far_1e-3']:.4f}  failed {r['n_failed_detect']}/{r['n_pairs']}  "
              f"with failures {r['accuracy_with_failures']:.4f}  {r['seconds']:.1f} s")
    return results


def _score(pairs, emb, sim, seconds) -> dict:
    sims, same, failed = [], [], 0
    wrong_fail = 0
    for pair in pairs:
        a, b = emb[pair.a], emb[pair.b]
        if a is None or b is None:
            failed += 1
            wrong_fail += pair.same
            continue
        sims.append(sim(a, b))
        same.append(pair.same)
    s, y = np.array(sims), np.array(same, bool)
    report = {"n_pairs": len(pairs), "n_failed_detect": failed}
    report.update(verification_report(s, y))
    correct = ((s >= report["threshold"]) == y).sum() + failed - wrong_fail
    report["accuracy_with_failures"] = round(float(correct / len(pairs)), 4)
    report["seconds"] = round(seconds, 2)
    return report


def _median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def _edge_latency(rgb: np.ndarray, threads: int, runs: int) -> dict:
    """Median ms of edge's stages on one frame with `threads` interpreter threads (cmd_latency's edge half)."""
    out = {}
    analyzer = FaceAnalyzer.create(VisionOptions(threads=threads))
    dets = analyzer.detect(rgb)
    assert dets, "no face in the benchmark image"
    chip = analyzer.embed(rgb, dets[0]).chip
    out[f"edge int8 detect 1280x720 frame, {threads} thread(s) ms"] = _median_ms(lambda: analyzer.detect(rgb), runs)
    out[f"edge int8 embed chip, {threads} thread(s) ms"] = _median_ms(lambda: analyzer.embedder.embed(chip), runs)
    out[f"edge int8 align+embed face, {threads} thread(s) ms"] = _median_ms(
        lambda: analyzer.embed(rgb, dets[0]), runs)
    if threads == 1:  # the numpy stages do not use the interpreter's threads
        from edge.vision.landmarks import detection_landmarks, dlib_chip

        pts = detection_landmarks(analyzer.landmarks, rgb, dets[0])
        out["edge dlib 5-point landmarks ms"] = _median_ms(
            lambda: detection_landmarks(analyzer.landmarks, rgb, dets[0]), runs)
        out["edge dlib chip cut ms"] = _median_ms(lambda: dlib_chip(rgb, pts), runs)
    plain = FaceAnalyzer.create(VisionOptions(threads=threads, flip=False, alignment="keypoints"))
    out[f"edge int8 keypoint align+embed, no flip (before), {threads} thread(s) ms"] = _median_ms(
        lambda: plain.embed(rgb, dets[0]), runs)
    return out


def cmd_latency(args: argparse.Namespace) -> dict:
    import cv2

    rgb = read_image(args.image)
    if rgb.shape[:2] != (720, 1280):
        rgb = cv2.resize(rgb, (1280, 720), interpolation=cv2.INTER_AREA)
    out = {}
    for threads in (1, 2):
        out.update(_edge_latency(rgb, threads, args.runs))
    boxes = face_recognition.face_locations(rgb, 1, "hog")
    out["face_recognition HOG detect 1280x720 frame (upsample 1) ms"] = _median_ms(
        lambda: face_recognition.face_locations(rgb, 1, "hog"), max(5, args.runs // 10))
    out["face_recognition landmarks+chip+descriptor per face ms"] = _median_ms(
        lambda: face_recognition.face_encodings(rgb, boxes[:1], 1, "small"), args.runs)
    for k, v in out.items():
        print(f"{k:62s} {v:8.2f}")
    return out


def cmd_clip(args: argparse.Namespace) -> dict:
    """fps of dlib's pipeline (HOG + landmarks + descriptor for every face, every frame) vs `edge bench` (lossless,
    unthrottled) on the same clip, measured in this one run."""
    import cv2

    from edge.evaluation.pipeline_bench import run_bench

    cap = cv2.VideoCapture(str(args.video))
    frames = []
    while len(frames) < args.frames:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    t0 = time.perf_counter()
    faces = 0
    for rgb in frames:
        boxes = face_recognition.face_locations(rgb, number_of_times_to_upsample=1, model="hog")
        faces += len(face_recognition.face_encodings(rgb, boxes, num_jitters=1, model="small"))
    fr_fps = len(frames) / (time.perf_counter() - t0)
    edge = run_bench(FaceAnalyzer.create(VisionOptions(threads=2)), args.video, Path("tests/data/faces"))
    out = {"video": str(args.video), "face_recognition_fps": round(fr_fps, 2), "face_recognition_frames": len(frames),
           "face_recognition_faces": faces, "edge_fps": edge["fps"], "edge_frames": edge["frames"],
           "ratio": round(edge["fps"] / fr_fps, 1)}
    print(json.dumps(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the results here")
    p = sub.add_parser("latency")
    p.add_argument("--image", type=Path, required=True, help="a photo with a face; resized to 1280×720")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--json", type=Path, help="also write the results here")
    p = sub.add_parser("clip")
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--frames", type=int, default=60, help="frames for face_recognition (it is slow)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    result = {"pairs": cmd_pairs, "latency": cmd_latency, "clip": cmd_clip}[args.cmd](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
