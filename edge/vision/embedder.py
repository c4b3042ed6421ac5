"""Face embedding: an aligned chip → the model → an L2-normalised vector (cosine similarity = dot product)."""

from __future__ import annotations

import numpy as np

from edge.errors import ModelError
from edge.vision.runtime import Model


class FaceEmbedder:
    """Turn aligned RGB chips into unit vectors.

    model: an embedding model taking (1, S, S, 3) RGB pixels 0..255 and returning (1, D).
    flip: also embed the mirrored chip and average (better verification and identification for dlib's
    descriptor, at 2× the embedding cost).
    """

    def __init__(self, model: Model, flip: bool = False) -> None:
        shape = model.input_shape
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise ModelError(f"embedding model {model.name} has input {shape}; expected (1, S, S, 3)")
        if len(model.output_shapes) != 1 or len(model.output_shapes[0]) != 2:
            raise ModelError(f"embedding model {model.name} outputs {model.output_shapes}; expected one (1, D)")
        self.model = model
        self.flip = flip
        self.chip_size: int = shape[1]
        self.dim: int = model.output_shapes[0][1]

    def raw(self, chip: np.ndarray) -> np.ndarray:
        """The model's unnormalised (D,) float32 output for one chip."""
        return self.model.run(chip)[0].reshape(-1)

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """(D,) float32 unit vector for one (S, S, 3) uint8 RGB chip."""
        if chip.shape != (self.chip_size, self.chip_size, 3):
            raise ModelError(f"chip of shape {chip.shape}; the embedder needs ({self.chip_size}, {self.chip_size}, 3)")
        v = self.raw(chip)
        if self.flip:
            v = v / np.linalg.norm(v) + (w := self.raw(np.ascontiguousarray(chip[:, ::-1]))) / np.linalg.norm(w)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings in [-1, 1] (they need not be normalised)."""
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
