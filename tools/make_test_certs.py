"""Make a throw-away PKI for testing the broker: CA, broker certificate, device and operator client certificates.

Everything is EC P-256 / ECDSA-SHA256, PEM, private keys mode 0600. Written into OUT:

- ca.crt, ca.key: the test CA (the broker's `cafile`; clients trust it for the broker too);
- server.crt, server.key: the broker, SAN 127.0.0.1 and localhost;
- <device>.crt, <device>.key: one client certificate per device, CN = device id;
- operator.crt, operator.key: the consumer's client certificate, CN "operator";
- rogue-ca.crt, rogue-ca.key, rogue.crt, rogue.key: an unrelated CA and a client certificate under it that claims
  to be the first device (CN = devices[0]); the broker must refuse it.

Never used in production and never committed: the tests generate a fresh PKI into a temporary directory.

    python tools/make_test_certs.py --out DIR --devices cam-a cam-b

Importable too (tests/broker.py loads this file): `make_pki(out, devices) -> Pki`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OPERATOR = "operator"
#: The operator's publishing tool (`edge watchlist publish`): its own identity, so it never displaces the consumer.
PUBLISHER = "operator-publish"
ROGUE = "rogue"
# Device ids become MQTT usernames and topic levels (ACL `pattern edge/%u/...`): no "/", "+", "#" or spaces.
_DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Pki:
    """Paths of a generated PKI. `cert(name)` / `key(name)` for a device id, "operator" or "rogue"."""

    dir: Path
    devices: tuple[str, ...]

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def rogue_ca(self) -> Path:
        return self.dir / "rogue-ca.crt"

    def cert(self, name: str) -> Path:
        return self._existing(name, "crt")

    def key(self, name: str) -> Path:
        return self._existing(name, "key")

    def _existing(self, name: str, ext: str) -> Path:
        path = self.dir / f"{name}.{ext}"
        if not path.is_file():
            raise KeyError(f"no client certificate named {name!r} in {self.dir} "
                           f"(have: {', '.join(self.devices)}, {OPERATOR}, {PUBLISHER}, {ROGUE})")
        return path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-watchlist test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # the file may have existed with wider permissions
        f.write(pem)


def _issue(path_stem: Path, cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           kind: str, days: int, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Make a key and a certificate for `cn`; kind is "ca", "server" or "client"; issuer None = self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if kind == "ca":
        builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                encipher_only=False, decipher_only=False), critical=True))
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if kind == "server":
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    path_stem.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(path_stem.with_suffix(".key"), key)
    return cert, key


def make_pki(out: Path, devices: list[str] | tuple[str, ...] = ("cam-a", "cam-b"), days: int = 30) -> Pki:
    """Write a fresh test PKI into `out` (created if missing; existing files of the same names are replaced)."""
    devices = tuple(devices)
    if not devices:
        raise ValueError("at least one device id is needed (the rogue certificate impersonates the first)")
    for device in devices:
        if not _DEVICE_ID.match(device) or device in (OPERATOR, PUBLISHER, ROGUE):
            raise ValueError(f"device id {device!r} is not usable as a certificate CN and topic level: "
                             f"use 1-63 of a-z, 0-9 and '-', and not {OPERATOR!r} or {ROGUE!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca = _issue(out / "ca", "edge-watchlist test CA", None, "ca", days, now)
    _issue(out / "server", "localhost", ca, "server", days, now)
    for name in (*devices, OPERATOR, PUBLISHER):
        _issue(out / name, name, ca, "client", days, now)
    rogue_ca = _issue(out / "rogue-ca", "unrelated CA", None, "ca", days, now)
    _issue(out / ROGUE, devices[0], rogue_ca, "client", days, now)
    return Pki(out, devices)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the PEM files into")
    parser.add_argument("--devices", nargs="+", default=["cam-a", "cam-b"], metavar="ID",
                        help="device ids (certificate CNs); default: cam-a cam-b")
    parser.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    args = parser.parse_args(argv)
    try:
        pki = make_pki(args.out, args.devices, args.days)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote a test PKI to {pki.dir}: CA, broker (127.0.0.1, localhost), "
          f"{', '.join(pki.devices)}, {OPERATOR}, {ROGUE} (unrelated CA)")


if __name__ == "__main__":
    main()
