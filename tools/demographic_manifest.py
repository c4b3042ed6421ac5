"""Write the UTKFace dev chips as an `edge eval demographics` manifest (never committed: it lists dev data).

UTKFace encodes age, gender and race in each file name (`age_gender_race_datetime.jpg.chip.jpg`; gender 0 male,
1 female; race 0–4 = White, Black, Asian, Indian, Others, as UTKFace defines them — self-described categories of one
data set, not ground truth). Identities are unknown: every pair counts as an impostor pair — and UTKFace is not
"mostly one photo per person": looked at, the adult pairs scoring 0.68–0.96 with MobileFaceNet were the same
celebrity at different ages (Susan Sarandon, Michael Douglas, Helen Mirren, …), so its rates are upper bounds.

    python tools/demographic_manifest.py --data ../shared/data --out /work/cache/demo/utk.csv [--min-age 16]
    edge eval demographics --manifest /work/cache/demo/utk.csv --root ../shared/data --group-columns race gender \\
        --size 1000 30000 300000 --json --plot /tmp/utk.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

RACE = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
GENDER = {"0": "male", "1": "female"}

#: Below this age (years, the file name's) a chip is in the band "child (<16)".
CHILD_AGE = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--min-age", type=int, default=0, help="leave out chips of people younger than this (years)")
    args = ap.parse_args()
    rows, skipped = [], 0
    with open(args.data / "utkface_crop_part1" / "manifest.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            parts = Path(r["path"]).name.split("_")
            if len(parts) < 4 or parts[1] not in GENDER or parts[2] not in RACE or not parts[0].isdigit():
                skipped += 1
                continue
            if int(parts[0]) < args.min_age:
                skipped += 1
                continue
            band = f"child (<{CHILD_AGE})" if int(parts[0]) < CHILD_AGE else "adult"
            rows.append((f"utkface_crop_part1/{r['path']}", "", RACE[parts[2]], GENDER[parts[1]], band))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "identity", "race", "gender", "age_band"])
        w.writerows(rows)
    print(f"{len(rows)} chips ({skipped} younger than --min-age or with an unreadable name left out) -> {args.out}")


if __name__ == "__main__":
    main()
