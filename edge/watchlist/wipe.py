"""Wipe statements: small signed JSON documents telling one device, or the members of a group, to drop the
watchlist they hold up to a version. The format and its schema (pure); the operator signs them
(`edge.watchlist.operator.seal.sign_wipe`), a device verifies them (`edge.watchlist.device.verify.verify_wipe`),
and whether one applies is the install policy's decision (`edge.watchlist.device.policy.decide_wipe`).

    {"statement": canonical JSON of {"format", "audience", "upto_version", "issued", "key_id"} as a string,
     "signature": base64 Ed25519 over WIPE_DOMAIN + the statement's bytes}
"""

from __future__ import annotations

from typing import Any

from edge.watchlist import manifest as M
from edge.watchlist.frame import BundleError

WIPE_FORMAT = "edge-wl-wipe/1"
WIPE_DOMAIN = b"edge-watchlist-wipe/1\x00"
#: Largest wipe statement accepted, bytes.
MAX_WIPE_BYTES = 4096
WIPE_FIELDS = frozenset({"format", "audience", "upto_version", "issued", "key_id"})


def check_wipe(st: object) -> dict[str, Any]:
    """The statement if it is a well-formed wipe statement, else BundleError bad_wipe."""
    if not isinstance(st, dict) or set(st) != WIPE_FIELDS or st["format"] != WIPE_FORMAT:
        raise BundleError("bad_wipe", f"wipe statement is not a {WIPE_FORMAT} statement")
    try:
        if not isinstance(st["audience"], str) or not M.AUDIENCE_RE.match(st["audience"]):
            raise M.SchemaError("malformed_manifest", "audience must be 'device:<id>' or 'group:<name>'")
        M.need_int(st, "upto_version", 1)
        M.parse_time(st["issued"], "issued")
        M.need_hex(st, "key_id", 16)
    except M.SchemaError as err:
        raise BundleError("bad_wipe", f"wipe statement is malformed: {err}") from None
    return st
