"""Store a demographic summary (`edge eval demographics --save-summary`) in the model manifest, beside the
embedder's impostor tail, with its provenance: what `edge watchlist seal` and the review console read.

    edge eval demographics --manifest /work/cache/demo/utk.csv --root ../shared/data --group-columns race gender \\
        --size 1000 30000 300000 --save-summary /work/cache/demo/summary_new.json
    python tools/store_demographics.py /work/cache/demo/summary_new.json --model mobilefacenet_float32 \\
        --data "UTKFace crop_part1 (dev set), race × gender from its file names"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", type=Path)
    ap.add_argument("--model", required=True, help="embedder entry of models/manifest.json")
    ap.add_argument("--data", required=True, help="what the faces and their labels are (provenance)")
    ap.add_argument("--manifest", type=Path,
                    default=Path(__file__).resolve().parent.parent / "models" / "manifest.json")
    args = ap.parse_args()
    summary = json.loads(args.summary.read_text())
    if not {"thresholds", "groups"} <= summary.keys():
        raise SystemExit(f"{args.summary} is not a summary from `edge eval demographics --save-summary`")
    manifest = json.loads(args.manifest.read_text())
    entry = manifest["models"][args.model]
    summary["source"] = (f"{args.data}; tuned on nothing, measured on the dev set (../shared/data); every pair of "
                         "different faces counts as an impostor pair (identities unknown: a rare same-person pair "
                         "makes a group look worse, never better); " + str(summary.get("source", "")))
    entry["demographics"] = summary
    args.manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"stored {len(summary['groups'])} groups on {len(summary['thresholds'])} thresholds as "
          f"{args.model}.demographics")


if __name__ == "__main__":
    main()
