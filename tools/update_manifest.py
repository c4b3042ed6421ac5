"""Refresh the sha256 and byte size of every model in models/manifest.json from the files themselves.

Run after re-running a conversion script; everything else in the manifest (source, licence, parity numbers) is
written by hand from the conversion reports.

    python tools/update_manifest.py [models/]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    for name, entry in manifest["models"].items():
        data = (directory / entry["file"]).read_bytes()
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["bytes"] = len(data)
        print(f"{name}: {entry['sha256']} {len(data)} bytes")
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
