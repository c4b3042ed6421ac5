"""The model manifest (`models/manifest.json`): which files exist, their checksums, and how to call them.

Each entry names the file, its sha256, its kind (detector / embedder), its input and output conventions, where it
came from (package, version, licence), and the parity measured against its float reference. The runtime refuses
a file whose checksum does not match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ModelError
from edge.paths import models_dir
from edge.vision.runtime import Model, RuntimeOptions, load_model

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ModelInfo:
    """One manifest entry. `info` keeps the whole entry (source, licence, parity …) for `edge doctor` and docs."""

    name: str
    path: Path
    sha256: str
    kind: str
    info: dict[str, Any] = field(default_factory=dict)

    def load(self, options: RuntimeOptions | None = None) -> Model:
        """Load the file into an interpreter after checking its checksum."""
        return load_model(self.path, self.sha256, options, name=self.name)


@dataclass(frozen=True)
class Manifest:
    """All models of a models directory; `defaults` names the detector and embedder used when none is chosen."""

    directory: Path
    models: dict[str, ModelInfo]
    defaults: dict[str, str]
    fusion: dict | None = None

    def get(self, name: str, kind: str | None = None) -> ModelInfo:
        """The entry called `name` (of the given kind), or a ModelError listing the names there are."""
        info = self.models.get(name)
        if info is None or (kind and info.kind != kind):
            choices = sorted(n for n, m in self.models.items() if not kind or m.kind == kind)
            raise ModelError(
                f"no {kind or 'model'} named {name!r} in {self.directory / MANIFEST_NAME}; known: {', '.join(choices)}"
            )
        return info

    def embedding_space(self, primary: ModelInfo, fused: bool) -> str:
        """The id a watchlist is built in and checked against: the primary's family, plus the second embedder's
        ("dlib_resnet_v1+hse_faceres") when `fused` and the manifest fuses this primary."""
        family = primary.info.get("family", primary.name)
        section = self.fusion or {}
        if not fused or section.get("primary") != primary.name:
            return family
        second = self.get(section.get("secondary", ""), "embedder")
        return f"{family}+{second.info.get('family', second.name)}"

    def default(self, kind: str) -> ModelInfo:
        """The default model of a kind ("detector" or "embedder")."""
        if kind not in self.defaults:
            raise ModelError(f"{self.directory / MANIFEST_NAME} names no default {kind}")
        return self.get(self.defaults[kind], kind)


def load_manifest(directory: str | Path | None = None) -> Manifest:
    """Read `manifest.json` from a models directory (default: `edge.paths.models_dir()`)."""
    directory = Path(directory) if directory else models_dir()
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"model manifest not found: {path} (set EDGE_MODELS_DIR or `models_dir` in the config)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read model manifest {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise ModelError(f"model manifest {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ModelError(f"model manifest {path} has no 'models' table")
    models = {}
    for name, entry in raw["models"].items():
        missing = [k for k in ("file", "sha256", "kind") if k not in entry]
        if missing:
            raise ModelError(f"model manifest {path}: entry {name!r} lacks {', '.join(missing)}")
        models[name] = ModelInfo(name, directory / entry["file"], entry["sha256"], entry["kind"], entry)
    return Manifest(directory, models, dict(raw.get("defaults", {})), raw.get("fusion"))
