"""The faces a reviewer compares: the chips a device captured (sealed to the operator's evidence key inside the
event, opened here with the private key, each bound to its event and slot) and the chips the operator's watchlist
build enrolled (`edge.watchlist.operator.references`). Plain functions over a stored event row: no web framework.

Every "no face" has a reason a reviewer can act on (`Unavailable.message`): the device sent none (evidence off
on it), the console has no key to open it, or no enrolled face is known for the subject."""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

from edge.errors import EdgeError
from edge.messaging.payloads import PayloadError
from edge.messaging.thumbnail import decrypt_thumbnail, evidence_context

if TYPE_CHECKING:
    from edge.keys import PrivateKey
    from edge.watchlist.operator.references import References

#: Evidence slot → the event field carrying that sealed chip (1: the track's best, 2: its second best).
EVIDENCE_SLOTS = {1: "thumbnail", 2: "thumbnail2"}
NO_EVIDENCE = ("the device sent no face with this event: evidence is off on it (events.thumbnails: false, or no"
               " operator evidence key provisioned) — compare against the original footage before confirming")
NO_KEY = "the face evidence is sealed to the operator's key: start the console with --thumbnail-key to open it"
NO_REFERENCE = ("no enrolled face for this subject: start the console with --watchlist BUILD_DIR (a build from"
                " `edge watchlist build`, which keeps the enrolled chips)")


class Unavailable(EdgeError):
    """A face that cannot be shown; `status` 404 (not there) or 422 (there but does not open)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def media_type(image: bytes) -> str:
    """image/jpeg or image/png, by signature."""
    return "image/jpeg" if image.startswith(b"\xff\xd8") else "image/png"


class Evidence:
    """Opens the faces of stored events. key: the operator's X25519 evidence private key (None: sealed faces stay
    sealed). references: `edge.watchlist.operator.references.References` of the operator's build, or None."""

    def __init__(self, key: PrivateKey | None = None, references: References | None = None) -> None:
        self.key = key
        self.references = references

    @property
    def can_open(self) -> bool:
        """Whether captured faces can be opened (the console has the evidence key)."""
        return self.key is not None

    @property
    def has_references(self) -> bool:
        """Whether the build's enrolled faces are at hand."""
        return self.references is not None and bool(self.references.available)

    def captured(self, row: dict, slot: int) -> bytes:
        """The captured chip in `slot` (1 or 2) of a stored event row, opened; Unavailable naming why not."""
        sealed = row["event"].get(EVIDENCE_SLOTS[slot])
        if not isinstance(sealed, dict):
            raise Unavailable(404, NO_EVIDENCE if slot == 1 else "the device sent one face with this event, not two")
        if self.key is None:
            raise Unavailable(404, NO_KEY)
        try:
            return decrypt_thumbnail(sealed, self.key, evidence_context(row["event_id"], slot))
        except PayloadError as err:
            raise Unavailable(422, str(err)) from None

    def enrolled(self, subject_id: str) -> list[bytes]:
        """The enrolled chips of `subject_id` (at most two), JPEG bytes; [] when none is known."""
        return self.references.images(subject_id) if self.references is not None else []

    def reference(self, row: dict, n: int) -> bytes:
        """The n-th (1-based) enrolled chip of the event's subject; Unavailable naming why not."""
        refs = self.enrolled(row["subject_id"])
        if not 1 <= n <= len(refs):
            raise Unavailable(404, NO_REFERENCE if not refs else f"the build keeps {len(refs)} enrolled face(s) of"
                                                                  " this subject")
        return refs[n - 1]

    def case(self, row: dict) -> dict:
        """The faces of a case file: captured (opened) and enrolled, each with its media type, size and SHA-256,
        and `problems` saying what could not be included and why."""
        def entry(kind: str, n: int, image: bytes) -> dict:
            return {"kind": kind, "n": n, "media_type": media_type(image), "bytes": len(image),
                    "sha256": hashlib.sha256(image).hexdigest(), "base64": base64.b64encode(image).decode("ascii")}

        captured, problems = [], []
        for slot in EVIDENCE_SLOTS:
            try:
                captured.append(entry("captured", slot, self.captured(row, slot)))
            except Unavailable as err:
                if slot == 1 or err.status != 404:
                    problems.append(f"captured {slot}: {err}")
        refs = self.enrolled(row["subject_id"])
        if not refs:
            problems.append("reference: " + NO_REFERENCE)
        return {"captured": captured, "reference": [entry("reference", n, img) for n, img in enumerate(refs, 1)],
                "problems": problems}
