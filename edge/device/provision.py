"""`edge device provision`: a new device's keys, made on (or for) the device.

Writes into `out`:
- `device.key` (X25519 private, 0600) and `device.pub` (0644): watchlist bundles are encrypted to device.pub;
- `tls.key` (EC P-256 private, 0600) and `tls.csr` (PEM CSR with CN = the device id): the operator's CA signs it
  into the client certificate the broker authenticates (its CN becomes the MQTT username, see
  firmware-config/mosquitto/);
- `device.json`: {device_id, key_id, public_key (PEM), csr (file name), tls_key (file name)};
- with `evidence_key`: `operator-evidence.pub` (0644), the operator's X25519 evidence key, checked and copied, so
  the device seals its events' face chips to it (`events.operator_thumbnail_key`).
Existing key files are never replaced without `force`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge import keys
from edge.audit_seal import new_keys as new_seal_keys
from edge.durable import atomic_write, private_dir
from edge.errors import EdgeError

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEVICE_KEY, DEVICE_PUB, TLS_KEY, TLS_CSR, DEVICE_JSON = "device.key", "device.pub", "tls.key", "tls.csr", "device.json"
EVIDENCE_PUB = "operator-evidence.pub"


class ProvisionError(EdgeError):
    """A bad device id, or key files that already exist."""


@dataclass(frozen=True)
class Provisioned:
    device_id: str
    key_id: str
    public_key_pem: str
    out: Path
    csr_path: Path
    warnings: tuple[str, ...] = ()
    evidence_key_id: str | None = None

    def to_json(self) -> dict:
        return {"device_id": self.device_id, "key_id": self.key_id, "public_key": self.public_key_pem,
                "device_key": str(self.out / DEVICE_KEY), "device_pub": str(self.out / DEVICE_PUB),
                "tls_key": str(self.out / TLS_KEY), "csr": str(self.csr_path),
                "device_json": str(self.out / DEVICE_JSON), "audit_seal": str(self.out / "audit.seal"),
                "audit_verify_key": str(self.out / "audit-verify.key"), "warnings": list(self.warnings),
                "evidence_key": str(self.out / EVIDENCE_PUB) if self.evidence_key_id else None,
                "evidence_key_id": self.evidence_key_id}


def validate_device_id(device_id: str) -> list[str]:
    """Raise ProvisionError for an invalid id; return warnings (e.g. upper case) for a valid one."""
    if not DEVICE_ID_RE.match(device_id or ""):
        raise ProvisionError(f"invalid device id {device_id!r}: use 1–64 characters from A–Z a–z 0–9 . _ -")
    warnings = []
    if device_id != device_id.lower():
        warnings.append(f"device id {device_id!r} has upper-case letters; lower case is recommended (certificate CNs "
                        "and MQTT topics are case-sensitive; see firmware-config/mosquitto/README.md)")
    return warnings


def make_csr(device_id: str, tls_key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(tls_key, hashes.SHA256()))


def provision(device_id: str, out: str | Path, force: bool = False,
              evidence_key: str | Path | None = None) -> Provisioned:
    """Create the device's key pairs and CSR in `out`; refuses to replace existing key files unless `force`.
    evidence_key: the operator's X25519 evidence public key (PEM) to copy in as operator-evidence.pub."""
    warnings = validate_device_id(device_id)
    out = Path(out)
    evidence = keys.load_public_key(evidence_key, "device") if evidence_key is not None else None  # X25519
    if not force:
        for name in (DEVICE_KEY, DEVICE_PUB, TLS_KEY, TLS_CSR, DEVICE_JSON, "audit.seal", "audit-verify.key"):
            if (out / name).exists():
                raise ProvisionError(f"{out / name} already exists; use --force to replace it (the device's "
                                     "current keys and certificate would stop working)")
    private_dir(out)  # the device's key directory: 0700 whatever the umask
    device_key = keys.generate_device_key()
    public = device_key.public_key()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    keys.save_private_key(out / DEVICE_KEY, device_key, force=force)
    keys.save_public_key(out / DEVICE_PUB, public)
    keys.save_private_key(out / TLS_KEY, tls_key, force=force)  # type: ignore[arg-type]  # any PKCS#8 key saves
    new_seal_keys(out, device_id)  # audit.seal → the device's state dir; audit-verify.key → the operator, only
    csr_pem = make_csr(device_id, tls_key).public_bytes(serialization.Encoding.PEM)
    atomic_write(out / TLS_CSR, csr_pem, 0o644)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    kid = keys.key_id(public)
    doc = {"device_id": device_id, "key_id": kid, "public_key": pem, "csr": TLS_CSR, "tls_key": TLS_KEY}
    atomic_write(out / DEVICE_JSON, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)
    evidence_id = None
    if evidence is not None:
        keys.save_public_key(out / EVIDENCE_PUB, evidence)
        evidence_id = keys.key_id(evidence)
    return Provisioned(device_id, kid, pem, out, out / TLS_CSR, tuple(warnings), evidence_id)
