"""The device's install record: the highest watchlist version it accepted and that version's content hash (or
"wiped"), MAC'd with a key derived from the device key, so a rollback of installed.bundle while the service is
stopped is caught at start (`edge.watchlist.device.store`; the rule for what may be installed over it is
`edge.watchlist.device.policy.record_conflict`)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING

from edge.canonical import canonical_json
from edge.durable import atomic_write
from edge.keys import derive_key

if TYPE_CHECKING:
    from edge.watchlist.device.unseal import DeviceKey

#: The install record: the highest version accepted and its bundle's sha256, MAC'd with a key derived from the
#: device key, so a rollback of installed.bundle while the service is stopped is caught at start.
RECORD = "installed.version"
RECORD_FORMAT = "edge-wl-install-record/2"
_RECORD_PURPOSE = b"edge-watchlist-install-record/1"


class RecordError(Exception):
    """The install record exists but does not verify."""


class InstallRecord:
    """The record file at `path` for `device_id`, authenticated with a key derived from `device_private`."""

    def __init__(self, path: Path, device_id: str, device_private: DeviceKey) -> None:
        self.path, self.device_id = Path(path), device_id
        self._key = derive_key(device_private, _RECORD_PURPOSE)

    def _mac(self, version: int, content: str) -> str:
        body = canonical_json({"device_id": self.device_id, "version": version, "content_sha256": content})
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def write(self, version: int, content: str) -> None:
        """Replace the record atomically (0600)."""
        doc = {"format": RECORD_FORMAT, "device_id": self.device_id, "version": version,
               "content_sha256": content, "mac": self._mac(version, content)}
        atomic_write(self.path, canonical_json(doc), 0o600)

    def read(self) -> tuple[int, str] | None:
        """(version, content sha256 or "wiped") of a valid record; None when there is none; RecordError when it
        exists but does not verify (edited, another device's, or not a record)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if len(raw) > 4096:
                raise ValueError("too large")
            doc = json.loads(raw)
            version, sha = doc["version"], doc["content_sha256"]
            ok = (doc.get("format") == RECORD_FORMAT and doc.get("device_id") == self.device_id
                  and type(version) is int and isinstance(sha, str)
                  and hmac.compare_digest(str(doc.get("mac", "")), self._mac(version, sha)))
        except (ValueError, KeyError, TypeError, RecursionError):
            ok = False
        if not ok:
            raise RecordError(f"{self.path} does not verify with this device's key (edited or not ours)")
        return version, sha
