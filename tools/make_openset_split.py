"""Write an open-set gallery/probes split of the dev photos (DESIGN §8 formats, paths relative to the data root).

Every other identity (sorted) is enrolled with its first photo; its other photos are mated probes; every photo of
the other identities is a non-mated probe. Byte duplicates and multi-face photos are skipped.

    python tools/make_openset_split.py --data ../shared/data --out /tmp/openset
    edge eval openset --gallery /tmp/openset/gallery.csv --probes /tmp/openset/probes.csv --root ../shared/data
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

SETS = ("deepface", "face_recognition", "facenet_pytorch", "dlib_johns")

#: The same person labelled in two sets. deepface_id01 (deepface's img1…img10) is the actress of facenet-pytorch's
#: angelina_jolie folder: found by `edge eval openset` itself (all six rank-1 "errors" of an unmerged split went to
#: that subject at cosine 0.967–0.981, above every impostor score) and confirmed by looking at the photos.
ALIASES = {"deepface:deepface_id01": "facenet_pytorch:angelina_jolie"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    photos: dict[str, list[str]] = defaultdict(list)
    for name in SETS:
        with open(args.data / name / "manifest.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if (row.get("faces", "single") != "single" or row.get("byte_duplicate_of")
                        or row.get("kind", "raw") != "raw"):
                    continue
                ident = f"{name}:{row['identity']}"
                photos[ALIASES.get(ident, ident)].append(f"{name}/{row['path']}")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gallery.csv", "w", newline="") as g, open(args.out / "probes.csv", "w", newline="") as p:
        gw, pw = csv.writer(g), csv.writer(p)
        gw.writerow(["path", "identity"])
        pw.writerow(["path", "identity", "in_watchlist"])
        for i, ident in enumerate(sorted(photos)):
            paths = sorted(photos[ident])
            if i % 2 == 0:
                gw.writerow([paths[0], ident])
                for path in paths[1:]:
                    pw.writerow([path, ident, 1])
            else:
                for path in paths:
                    pw.writerow([path, ident, 0])
    print(f"wrote {args.out}/gallery.csv and probes.csv ({len(photos)} identities)")


if __name__ == "__main__":
    main()
