"""Dev-set cache for tuning and lever-by-lever measurement: detect every dev photo once, then embed per variant.

Nothing here is shipped; it writes outside the repo (the dev data must never be committed). Stages:

    python tools/devset.py detect --data ../shared/data --out /work/cache/dets.npz
    python tools/devset.py embed  --dets /work/cache/dets.npz --data ../shared/data --variant blaze \
        --out /work/cache/blaze.npz

`detect` keeps every detection of every photo (box, score, 6 keypoints). `embed` cuts the chip of the photo's
subject face (the dominant face, `edge.vision.quality.subject_face`) the variant's way, measures its quality figures
and stores the embedding(s): variants `blaze` (BlazeFace-keypoint chip) and `blaze_flip` (the same, flip-averaged).
ArcFace-class embedders (MobileFaceNet, `--embedder mobilefacenet_int8`) take 112×112 chips aligned to the five-point
ArcFace template; the landmark source is the variant: `onet` (MTCNN ONet's five points), `dlib5_arc` (dlib's five
points through a fixed mapping) or `blaze_arc` (BlazeFace's keypoints through a fixed mapping); the mappings are
fitted by `fit-arc` (mean positions on ONet-aligned chips of a sample of the dev photos: tuned on the dev set):

    python tools/devset.py fit-arc --dets /work/cache/dets.npz --data ../shared/data \
        --out /work/cache/arc_templates.json
    python tools/devset.py embed --dets /work/cache/dets.npz --data ../shared/data --variant onet_flip \
        --embedder mobilefacenet_int8 --out /work/cache/mfn_onet_flip.npz
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.errors import EdgeError
from edge.imageio import read_image
from edge.vision.analyzer import FaceAnalyzer, VisionOptions

SETS = ("deepface", "face_recognition", "facenet_pytorch", "dlib_johns", "celeba_wild", "celeba_lowres",
        "utkface_crop_part1")
ALIASES = {"deepface:deepface_id01": "facenet_pytorch:angelina_jolie"}
MAX_DETS = 8


def dev_photos(data: Path) -> list[tuple[str, str, str]]:
    """(set, path relative to data, identity or '') for every usable dev photo."""
    out = []
    for name in SETS:
        with open(data / name / "manifest.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("byte_duplicate_of") or row.get("kind", "raw") != "raw":
                    continue
                ident = (row.get("identity") or "").strip()
                if ident and not ident.startswith("celeba:"):
                    ident = f"{name}:{ident}"
                out.append((name, f"{name}/{row['path']}", ALIASES.get(ident, ident)))
    return out


def cmd_detect(args: argparse.Namespace) -> None:
    analyzer = FaceAnalyzer.create(VisionOptions(threads=args.threads))
    photos = dev_photos(args.data)
    n = len(photos)
    boxes = np.full((n, MAX_DETS, 4), np.nan, np.float32)
    scores = np.zeros((n, MAX_DETS), np.float32)
    kps = np.full((n, MAX_DETS, 6, 2), np.nan, np.float32)
    ndet = np.zeros(n, np.int16)
    size = np.zeros((n, 2), np.int32)
    for i, (_, rel, _) in enumerate(tqdm(photos, desc="detect", mininterval=10)):
        try:
            rgb = read_image(args.data / rel)
        except EdgeError:
            ndet[i] = -1
            continue
        size[i] = rgb.shape[1], rgb.shape[0]
        dets = analyzer.detect(rgb)[:MAX_DETS]
        ndet[i] = len(dets)
        for j, d in enumerate(dets):
            boxes[i, j], scores[i, j], kps[i, j] = d.box, d.score, d.keypoints
    np.savez(args.out, set=np.array([p[0] for p in photos]), path=np.array([p[1] for p in photos]),
             identity=np.array([p[2] for p in photos]), boxes=boxes, scores=scores, keypoints=kps, ndet=ndet,
             size=size)
    print(f"{n} photos, {int((ndet > 0).sum())} with a face, {int((ndet > 1).sum())} with several -> {args.out}")


def _onet():
    from edge.vision.manifest import load_manifest
    from edge.vision.onet import ONet
    from edge.vision.runtime import RuntimeOptions

    return ONet(load_manifest().get("mtcnn_onet_float32", "landmarks").load(RuntimeOptions(1)))


def arc_chipper(variant: str, templates: Path | None):
    """(rgb, detection) → 112×112 ArcFace chip, the five points from the variant's landmark source."""
    from edge.vision.align import ARCFACE_SIZE, CHIP_SIZE, align_face, arcface_chip

    if variant.startswith("onet"):
        onet = _onet()
        return lambda rgb, det: arcface_chip(rgb, onet.landmarks(rgb, det))
    if templates is None:
        raise SystemExit(f"variant {variant} needs --arc-templates (from `fit-arc`)")
    tmpl = json.loads(templates.read_text())
    k = "dlib5" if variant.startswith("dlib5") else "blaze"
    t = np.array(tmpl[k], np.float32) * (CHIP_SIZE / ARCFACE_SIZE)
    if k == "blaze":
        w = np.array([1, 1, 1, 1, 0, 0], np.float32)
        return lambda rgb, det: align_face(rgb, det.keypoints, ARCFACE_SIZE, t, w)
    from edge.paths import models_dir
    from edge.vision.landmarks import detection_landmarks, load_shape_predictor
    sp = load_shape_predictor(models_dir() / "dlib_shape_predictor_5.npz")
    return lambda rgb, det: align_face(rgb, detection_landmarks(sp, rgb, det), ARCFACE_SIZE, t, np.ones(5, np.float32))


def cmd_fit_arc(args: argparse.Namespace) -> None:
    """Mean positions of dlib's 5 points and BlazeFace's 6 keypoints on ONet-aligned ArcFace chips (112 px)."""
    from edge.paths import models_dir
    from edge.types import Detection
    from edge.vision.align import ARCFACE_TEMPLATE, similarity_transform
    from edge.vision.landmarks import detection_landmarks, load_shape_predictor

    d = np.load(args.dets)
    onet = _onet()
    sp = load_shape_predictor(models_dir() / "dlib_shape_predictor_5.npz")
    rng = np.random.default_rng(0)
    single = np.flatnonzero(d["ndet"] == 1)
    acc = {"dlib5": [], "blaze": []}
    for i in tqdm(rng.choice(single, min(args.n, len(single)), replace=False), desc="fit-arc", mininterval=10):
        det = Detection(tuple(map(float, d["boxes"][i, 0])), float(d["scores"][i, 0]), d["keypoints"][i, 0])
        if det.eye_distance < 30:  # small faces: noisy landmarks
            continue
        rgb = read_image(args.data / str(d["path"][i]))
        m = similarity_transform(onet.landmarks(rgb, det), ARCFACE_TEMPLATE)
        for k, pts in (("dlib5", detection_landmarks(sp, rgb, det)), ("blaze", det.keypoints)):
            acc[k].append(np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2])
    out = {k: np.median(np.stack(v), axis=0).round(3).tolist() for k, v in acc.items()}
    out["n"] = len(acc["dlib5"])
    args.out.write_text(json.dumps(out))
    print(json.dumps(out))


def cmd_facehash(args: argparse.Namespace) -> None:
    """Per photo: its subject's face box as a 32×32 grey thumbnail, high-passed (minus its 5×5 box blur), unit-norm
    (float16): the embedder-independent fingerprint `devset_eval.py` uses to find near-duplicate photos among
    impostor pairs. The high-pass keeps what only the same photo shares (hair strands, skin texture, JPEG detail):
    a plain 16×16 thumbnail correlated ≥ 0.96 for different people in similar light and pose (looked at)."""
    import cv2

    d = np.load(args.dets)
    n = len(d["path"])
    out = np.zeros((n, 1024), np.float16)
    for i in tqdm(range(n), desc="facehash", mininterval=10):
        if int(d["ndet"][i]) <= 0:
            continue
        grey = cv2.cvtColor(read_image(args.data / str(d["path"][i])), cv2.COLOR_RGB2GRAY)
        x0, y0, x1, y1 = (int(round(v)) for v in d["boxes"][i, 0])
        h, w = grey.shape
        crop = grey[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        if crop.size == 0:
            continue
        t = cv2.resize(crop, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        v = (t - cv2.blur(t, (5, 5))).ravel()
        out[i] = v / max(float(np.linalg.norm(v)), 1e-6)
    np.savez(args.out, path=d["path"], hash=out)
    print(f"{n} fingerprints -> {args.out}")


def cmd_embed(args: argparse.Namespace) -> None:
    from edge.types import Detection
    from edge.vision import quality as q

    from edge.vision.align import TEMPLATE, align_face

    d = np.load(args.dets)
    analyzer = FaceAnalyzer.create(VisionOptions(threads=args.threads, flip=args.variant.endswith("_flip"),
                                                 embedder=args.embedder))
    size = analyzer.embedder.chip_size
    unit = TEMPLATE / 150.0 * 1.5 - 0.25  # dlib's normalised face square (0..1) for the BlazeFace template
    template = ((unit + args.padding) / (1.0 + 2.0 * args.padding) * 150.0).astype(np.float32)
    if args.variant.startswith(("onet", "dlib5_arc", "blaze_arc")):
        chipper = arc_chipper(args.variant, args.arc_templates)
    elif args.variant.startswith("dlib5"):
        from edge.paths import models_dir
        from edge.vision.landmarks import detection_landmarks, dlib_chip, load_shape_predictor
        sp = load_shape_predictor(models_dir() / "dlib_shape_predictor_5.npz")

        def chipper(rgb, det):
            return dlib_chip(rgb, detection_landmarks(sp, rgb, det), size, args.padding)
    else:
        def chipper(rgb, det):
            return align_face(rgb, det.keypoints, size, template)
    n = len(d["path"])
    emb = np.zeros((n, analyzer.embedder.dim), np.float32)
    single = np.zeros_like(emb)  # with _flip: the chip's own embedding too (the no-flip variant, for free)
    chosen = np.full(n, -1, np.int16)
    figs = {k: np.full(n, np.nan, np.float32) for k in ("sharp_old", "sharp", "eye", "yaw", "roll", "score")}
    t_embed = []
    for i in tqdm(range(n), desc=f"embed {args.variant}", mininterval=10):
        k = int(d["ndet"][i])
        if k <= 0:
            continue
        dets = [Detection(tuple(map(float, d["boxes"][i, j])), float(d["scores"][i, j]), d["keypoints"][i, j])
                for j in range(k)]
        pick = q.subject_face(dets, tuple(d["size"][i]))
        j = pick.index if pick.index is not None else max(range(k), key=lambda j: dets[j].width * dets[j].height)
        chosen[i] = j if pick.index is not None else -2 - j  # -2-j: ambiguous, largest taken for measurement
        rgb = read_image(args.data / str(d["path"][i]))
        t0 = time.perf_counter()
        chip = chipper(rgb, dets[j])
        emb[i] = analyzer.embedder.embed(chip)
        if analyzer.embedder.flip:
            v = analyzer.embedder.raw(chip)
            single[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        t_embed.append(time.perf_counter() - t0)

        class face:  # noqa: N801 - the figures below need only the chip
            pass
        face.chip = align_face(rgb, dets[j].keypoints, 150)  # the gate's figures: the keypoint chip, as the device
        qual = q.assess(dets[j], face.chip, q.QualityThresholds())
        figs["sharp_old"][i] = q.laplacian_variance(face.chip)
        figs["sharp"][i], figs["eye"][i] = qual.sharpness, qual.eye_distance
        figs["yaw"][i], figs["roll"][i], figs["score"][i] = qual.yaw, qual.roll, qual.score
    extra = {"emb_single": single} if analyzer.embedder.flip else {}
    np.savez(args.out, path=d["path"], identity=d["identity"], set=d["set"], emb=emb, chosen=chosen, **figs, **extra)
    print(f"{args.variant}: {int((chosen != -1).sum())} faces embedded, align+embed median "
          f"{1000 * float(np.median(t_embed)):.2f} ms -> {args.out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("detect")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_detect)
    p = sub.add_parser("embed")
    p.add_argument("--dets", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--variant", default="blaze",
                   choices=("blaze", "blaze_flip", "dlib5", "dlib5_flip", "onet", "onet_flip", "dlib5_arc",
                            "dlib5_arc_flip", "blaze_arc", "blaze_arc_flip"),
                   help="chips from BlazeFace keypoints or from the numpy dlib 5-point predictor (dlib geometry), or "
                        "ArcFace chips from ONet / dlib5 / BlazeFace points; _flip: flip-averaged")
    p.add_argument("--arc-templates", type=Path, help="dlib5_arc / blaze_arc: the mappings written by fit-arc")
    p.add_argument("--embedder", help="manifest name (default: the manifest's default embedder)")
    p.add_argument("--padding", type=float, default=0.25, help="chip padding (dlib geometry; 0.25 = dlib's own)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_embed)
    p = sub.add_parser("facehash")
    p.add_argument("--dets", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(fn=cmd_facehash)
    p = sub.add_parser("fit-arc")
    p.add_argument("--dets", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(fn=cmd_fit_arc)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
