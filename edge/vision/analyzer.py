"""Photos in, faces out: detector + alignment + embedder behind one small API (`edge detect` / `compare` / `eval`).

The appliance loop composes the same three parts itself (it embeds only what the tracker asks for); this facade
serves the one-shot commands, enrollment and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ModelError
from edge.types import Detection, Face, shift
from edge.vision.align import ARCFACE_KEYPOINT_TEMPLATE, ARCFACE_SIZE, CHIP_SIZE, align_face, arcface_chip
from edge.vision.detector import FaceDetector
from edge.vision.embedder import FaceEmbedder
from edge.vision.fusion import Fusion, load_fusion
from edge.vision.landmarks import ShapePredictor, detection_landmarks, dlib_chip, load_shape_predictor
from edge.vision.manifest import Manifest, ModelInfo, load_manifest
from edge.vision.onet import ONet
from edge.vision.runtime import RuntimeOptions, sha256_file


@dataclass(frozen=True)
class VisionOptions:
    """Which models to load and how.

    detector / embedder: manifest names (None = the manifest's defaults, the int8 models).
    threads: CPU threads per interpreter. backend: "auto", "litert" or "tflite-runtime".
    delegate: delegate library for the detector (e.g. "libedgetpu.so.1"), or None.
    min_score: detector threshold (probability). flip: average the embeddings of a chip and its mirror image.
    alignment: "auto" (the embedder's own, from its manifest entry: "onet" for ArcFace-template embedders, "dlib5"
    for dlib's), "onet" (MTCNN ONet's five points → the 112×112 ArcFace template), "dlib5" (dlib's 5-point
    landmarks predicted in numpy from the detection, then dlib's own chip) or "keypoints" (a similarity from
    BlazeFace's keypoints to the embedder's template; cheaper, less accurate).
    fusion: also run the manifest's fused second embedder (needs alignment "dlib5"; see `edge.vision.fusion`).
    models_dir: directory with manifest.json (None = `edge.paths.models_dir()`).
    """

    detector: str | None = None
    embedder: str | None = None
    threads: int = 2
    backend: str = "auto"
    delegate: str | None = None
    min_score: float = 0.5
    flip: bool = True
    models_dir: Path | None = None
    alignment: str = "auto"
    fusion: bool = True


#: Alignments each chip template allows (the first is the embedder's own, what "auto" means).
ALIGNMENTS = {"dlib": ("dlib5", "keypoints"), "arcface": ("onet", "keypoints")}


def resolve_alignment(options: VisionOptions, primary: ModelInfo) -> str:
    """The alignment `options` mean for this embedder ("auto" → its own); ModelError for one it cannot take."""
    template = _template(primary)
    allowed = ALIGNMENTS[template]
    if options.alignment == "auto":
        return allowed[0]
    if options.alignment not in allowed:
        raise ModelError(f"alignment {options.alignment!r} does not suit embedder {primary.name} ({template} chips); "
                         f"choose one of: auto, {', '.join(allowed)}")
    return options.alignment


def _template(info: ModelInfo) -> str:
    template = str(info.info.get("alignment", {}).get("template", "dlib"))
    if template not in ALIGNMENTS:  # dlib's entries name a template file ("edge/vision/align.py TEMPLATE")
        return "arcface" if template.startswith("arcface") else "dlib"
    return template


def _fuses(options: VisionOptions, manifest: Manifest, primary: ModelInfo) -> bool:
    """Whether `options` run the manifest's fused second embedder beside `primary` (needs dlib5 alignment)."""
    section = manifest.fusion
    return bool(options.fusion and resolve_alignment(options, primary) == "dlib5" and section
                and section.get("primary") == primary.name)


def _primary(options: VisionOptions, manifest: Manifest) -> ModelInfo:
    return manifest.get(options.embedder, "embedder") if options.embedder else manifest.default("embedder")


def embedder_identity(options: VisionOptions, manifest: Manifest | None = None) -> tuple[str, str]:
    """(embedder id, sha256 of the primary embedder file) for `options`, from the manifest alone (nothing loads).

    The embedder id is the embedding space a watchlist is built in and a device checks it against
    (`Manifest.embedding_space`): the primary's family, plus the second embedder's when scores are fused
    ("dlib_resnet_v1+hse_faceres"). `FaceAnalyzer.embedder_id` is this value; it means the same everywhere.
    """
    manifest = manifest or load_manifest(options.models_dir)
    primary = _primary(options, manifest)
    return manifest.embedding_space(primary, _fuses(options, manifest, primary)), primary.sha256


#: Border added around a photo in which no face was found, as a fraction of its height (see `FaceAnalyzer.detect`).
CLOSEUP_BORDER = 0.25


class FaceAnalyzer:
    """Detect, align and embed faces in RGB photos. Not thread-safe: one analyzer per thread.

    closeup_retry: retry photos without a face inside a border (tight crops); costs a second detector run only
    for photos where the first finds nothing.
    """

    def __init__(self, detector: FaceDetector, embedder: FaceEmbedder, detector_info: ModelInfo,
                 embedder_info: ModelInfo, closeup_retry: bool = True, landmarks: ShapePredictor | None = None,
                 secondary: FaceEmbedder | None = None, secondary_info: ModelInfo | None = None,
                 fusion: Fusion | None = None, embedding_space: str | None = None, onet: ONet | None = None) -> None:
        self.closeup_retry = closeup_retry
        self.onet = onet
        self._space = embedding_space or embedder_info.info.get("family", embedder_info.name)
        self.secondary, self.secondary_info, self.fusion = secondary, secondary_info, fusion
        self.landmarks = landmarks
        self.chip_padding = float(embedder_info.info.get("alignment", {}).get("padding", 0.25))
        self.detector = detector
        self.embedder = embedder
        self.detector_info = detector_info
        self.embedder_info = embedder_info

    @classmethod
    def create(cls, options: VisionOptions | None = None) -> "FaceAnalyzer":
        """Load the models named by `options` (checksums verified)."""
        options = options or VisionOptions()
        manifest = load_manifest(options.models_dir)
        det_info = manifest.get(options.detector, "detector") if options.detector else manifest.default("detector")
        emb_info = _primary(options, manifest)
        det_model = det_info.load(RuntimeOptions(options.threads, options.backend, options.delegate))
        emb_model = emb_info.load(RuntimeOptions(options.threads, options.backend))
        detector = FaceDetector(
            det_model,
            variant=det_info.info.get("variant", "full_range"),
            score_kind=det_info.info.get("scores", "logit"),
            min_score=options.min_score,
        )
        if options.alignment not in ("auto", "dlib5", "keypoints", "onet"):
            raise ModelError(f"alignment must be 'auto', 'onet', 'dlib5' or 'keypoints', got {options.alignment!r}")
        alignment = resolve_alignment(options, emb_info)
        landmarks = onet = None
        if alignment == "onet":
            lm_name = str(emb_info.info.get("alignment", {}).get("landmarks", "mtcnn_onet_float32"))
            onet = ONet(manifest.get(lm_name, "landmarks").load(RuntimeOptions(options.threads, options.backend)))
        if alignment == "dlib5":
            lm = manifest.default("landmarks")
            if not lm.path.is_file() or sha256_file(lm.path) != lm.sha256:
                raise ModelError(f"landmark model {lm.path} is missing or its checksum does not match the manifest")
            landmarks = load_shape_predictor(lm.path)
        secondary = sec_info = fusion = None
        section = manifest.fusion
        if section is not None and landmarks is not None and _fuses(options, manifest, emb_info):
            sec_info = manifest.get(section.get("secondary", ""), "embedder")
            secondary = FaceEmbedder(sec_info.load(RuntimeOptions(options.threads, options.backend)), flip=False)
            fusion = load_fusion(section, manifest.directory, sha256_file)
        return cls(detector, FaceEmbedder(emb_model, flip=options.flip), det_info, emb_info, landmarks=landmarks,
                   secondary=secondary, secondary_info=sec_info, fusion=fusion,
                   embedding_space=embedder_identity(options, manifest)[0], onet=onet)

    @property
    def alignment(self) -> str:
        """"onet", "dlib5" or "keypoints" (see VisionOptions)."""
        return "onet" if self.onet is not None else "keypoints" if self.landmarks is None else "dlib5"

    def chip(self, rgb: np.ndarray, detection: Detection) -> np.ndarray:
        """The aligned (S, S, 3) uint8 RGB chip the embedder takes for one detected face."""
        size = self.embedder.chip_size
        if self.onet is not None:
            return arcface_chip(rgb, self.onet.landmarks(rgb, detection), size)
        if self.landmarks is None:
            if _template(self.embedder_info) == "arcface":
                return align_face(rgb, detection.keypoints, size,
                                  ARCFACE_KEYPOINT_TEMPLATE * (CHIP_SIZE / ARCFACE_SIZE))
            return align_face(rgb, detection.keypoints, size)
        return dlib_chip(rgb, detection_landmarks(self.landmarks, rgb, detection), size, self.chip_padding)

    @property
    def embedder_id(self) -> str:
        """The embedding space a watchlist is built in and checked against (`embedder_identity`)."""
        return self._space

    @property
    def fusion_meta(self) -> dict | None:
        """What a watchlist built by this analyzer records of its score fusion (None: no second embedder)."""
        return self.fusion.meta() if self.fusion is not None else None

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB photo, best score first.

        The full-range model misses faces that fill the whole picture (tight crops, passport-style photos): when
        it finds nothing, the photo is tried once more inside a black border of `CLOSEUP_BORDER` × its height.
        """
        found = self.detector.detect(rgb)
        if found or not self.closeup_retry:
            return found
        pad = max(1, round(CLOSEUP_BORDER * rgb.shape[0]))
        padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return [shift(d, -pad, -pad) for d in self.detector.detect(padded)]

    def embed(self, rgb: np.ndarray, detection: Detection) -> Face:
        """Align and embed one detected face (and, with fusion, embed its looser chip with the second embedder)."""
        if self.fusion is None or self.landmarks is None or self.secondary is None:
            chip = self.chip(rgb, detection)
            return Face(detection, chip, self.embedder.embed(chip))
        points = detection_landmarks(self.landmarks, rgb, detection)
        chip = dlib_chip(rgb, points, self.embedder.chip_size, self.chip_padding)
        pad2 = float(self.secondary_info.info.get("alignment", {}).get("padding", 0.25))  # type: ignore[union-attr]
        chip2 = dlib_chip(rgb, points, self.secondary.chip_size, pad2)
        return Face(detection, chip, self.embedder.embed(chip), self.fusion.project(self.secondary.raw(chip2)))

    def faces(self, rgb: np.ndarray) -> list[Face]:
        """Every face in the image, embedded."""
        return [self.embed(rgb, d) for d in self.detect(rgb)]

    def best_face(self, rgb: np.ndarray) -> Face | None:
        """The largest face in the image (by box area), embedded; None when there is none."""
        detections = self.detect(rgb)
        if not detections:
            return None
        return self.embed(rgb, max(detections, key=lambda d: d.width * d.height))
