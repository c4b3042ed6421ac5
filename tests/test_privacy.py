"""Privacy proof (DESIGN §6): what a running device sends over MQTT carries no image bytes.

The App runs end to end (real broker with the production TLS/ACL config, device cam-a's certificate) over a short
generated video with a listed face, so at least one match event is published. Everything the device sends is
captured twice:

- on the wire: a TCP relay thread sits between the device and the broker and records every client→broker byte
  (TLS ciphertext: it proves the *volume* is small — no raw frame could fit);
- in plaintext: an operator client subscribes to every topic the device's ACL lets it write (events, status,
  watchlist/state) and records each payload the device published.
"""

import base64
import json
import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from edge.config import load_config
from test_app import clip, provision, run_in_thread, write_config  # noqa: F401  (clip is a fixture)

SIGNATURES = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG"}
B64_SIGNATURES = {"JPEG as base64": b"/9j/", "PNG as base64": b"iVBORw0KGgo"}
MAX_PAYLOAD = 4 * 1024  # "a few KiB": one status or event message; a 640×480 RGB frame is 921,600 bytes
MAX_EVIDENCE_PAYLOAD = 16 * 1024  # an event with two sealed 5-KiB chips (base64) still fits the event limit
#: Every topic the ACL lets a device write (firmware-config/mosquitto/acl): together, all it can publish.
DEVICE_TOPICS = ("edge/cam-a/events", "edge/cam-a/status", "edge/cam-a/watchlist/state")


class Relay:
    """A loopback TCP relay to (host, port) that records every byte the client sends (client→broker)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()  # client → broker, all connections, in order
        self.received = 0  # broker → client byte count
        self.connections = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.connections += 1
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if upstream:
                        self.sent += data
                    else:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            for s in self._socks:
                s.close()


def assert_no_image(data: bytes, what: str) -> None:
    for name, sig in {**SIGNATURES, **B64_SIGNATURES}.items():
        assert sig not in data, f"{what} contains a {name} signature {sig!r}"


#: Evidence modes: no evidence key configured; the operator's key provisioned (evidence on by default); the key
#: provisioned but `events.thumbnails: false`.
MODES = {"no_key": (False, None), "evidence": (True, None), "evidence_off": (True, False)}


def sealed_chips(event: dict) -> list[dict]:
    return [event[k] for k in ("thumbnail", "thumbnail2") if event.get(k) is not None]


def evidence_config(tmp_path: Path, mode: str, operator_x25519) -> dict:
    """The config's `events:` section for `mode` (empty: the defaults)."""
    from edge import keys

    with_key, thumbnails = MODES[mode]
    events_cfg: dict = {}
    if with_key:  # provisioned as first boot does: the public half beside the config
        keys.save_public_key(tmp_path / "operator-evidence.pub", operator_x25519.public_key())
        events_cfg["operator_thumbnail_key"] = str(tmp_path / "operator-evidence.pub")
    if thumbnails is not None:
        events_cfg["thumbnails"] = thumbnails
    return events_cfg


def run_and_collect(cfg: Path, caplog, operator) -> list:
    """Run the App over its finite clip, then collect what `operator` receives until the device's final retained
    "offline" status (once at least one event came) or 3 s."""
    from edge.device.app import App

    seen: list = []
    with caplog.at_level(logging.WARNING, logger="edge.device.wiring"):
        app = App(load_config(cfg), cfg)
    thread, result = run_in_thread(app)  # a finite clip: the app stops by itself
    thread.join(30)
    assert not thread.is_alive() and result["code"] == 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # collect until the final retained "offline" status arrives
        try:
            msg = operator.inbox.get(timeout=0.2)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        seen.append(msg)
        if msg.topic.endswith("/status") and json.loads(msg.payload).get("state") == "offline" \
                and any(m.topic.endswith("/events") for m in seen):
            break
    return seen


def check_payloads(seen: list, mode: str) -> list[dict]:
    """Every payload the device published, in plaintext: on its own topics, no image, small. Returns the events."""
    from edge.messaging.payloads import decode_event

    events = [decode_event(m.payload) for m in seen if m.topic == "edge/cam-a/events"]
    assert events, f"no match event was published; got topics {[m.topic for m in seen]}"
    assert {e["subject_id"] for e in events} == {"obama"}
    limit = MAX_EVIDENCE_PAYLOAD if mode == "evidence" else MAX_PAYLOAD
    for m in seen:
        assert m.topic in DEVICE_TOPICS
        assert_no_image(m.payload, f"payload on {m.topic}")
        assert len(m.payload) <= limit, f"{m.topic}: {len(m.payload)} bytes"
    for e in events:
        for value in e.values():  # no field carries an image in any encoding
            assert not (isinstance(value, str) and len(value) > 512), e
    return events


def check_wire(relay: Relay, seen: list, events: list[dict], mode: str) -> bytes:
    """Every byte sent towards the broker: no image signature, far less than one raw frame. Returns those bytes."""
    wire = bytes(relay.sent)
    assert relay.connections >= 1 and len(wire) > 0
    assert_no_image(wire, "the client→broker byte stream")
    raw_frame = 640 * 480 * 3  # the clip's frame size (a 1280×720 frame would be 2,764,800 bytes)
    assert len(wire) < 96 * 1024 < raw_frame, f"{len(wire)} bytes sent"
    print(f"\nprivacy[{mode}]: device sent {len(wire)} bytes on the wire over {relay.connections} TLS"
          f" connection(s) (received {relay.received}); {len(seen)} MQTT payloads ({len(events)} event(s), largest"
          f" {max(len(m.payload) for m in seen)} bytes); no JPEG/PNG signature or base64 of one")
    return wire


def open_evidence(events: list[dict], operator_x25519) -> list[bytes]:
    """Each event's sealed chips opened with the operator's key and the event's context (and with no other key or
    slot); returns the JPEGs."""
    from edge import keys
    from edge.messaging.payloads import PayloadError
    from edge.messaging.thumbnail import decrypt_thumbnail, evidence_context

    jpegs = []
    for e in events:
        chips = sealed_chips(e)
        assert chips, e
        for slot, sealed in enumerate(chips, 1):
            jpeg = decrypt_thumbnail(sealed, operator_x25519, evidence_context(e["event_id"], slot))
            assert jpeg.startswith(b"\xff\xd8\xff") and len(jpeg) <= 5 * 1024
            jpegs.append(jpeg)
            with pytest.raises(PayloadError):
                decrypt_thumbnail(sealed, keys.generate_device_key(), evidence_context(e["event_id"], slot))
            with pytest.raises(PayloadError):  # moved to another slot (or event), it no longer opens
                decrypt_thumbnail(sealed, operator_x25519, evidence_context(e["event_id"], 3 - slot))
    return jpegs


def assert_no_face_pixels_in_clear(jpegs: list[bytes], wire: bytes, roots: tuple[Path, ...], since: float) -> None:
    """Pieces of each JPEG (raw and as base64 at each of the three alignments) are neither in `wire` nor in any
    file under `roots` modified since `since`; the outbox must be among the files scanned."""
    needles = []
    for jpeg in jpegs:
        middle = jpeg[len(jpeg) // 2:len(jpeg) // 2 + 48]
        needles.append(middle)
        needles += [base64.b64encode(pad + jpeg)[8:40] for pad in (b"", b"\0", b"\0\0")]
    for needle in needles:
        assert needle not in wire
    scanned = []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            try:
                if path.stat().st_mtime < since:
                    continue
                content = path.read_bytes()
            except OSError:
                continue
            scanned.append(path)
            assert b"JFIF" not in content or path.suffix in (".mp4", ".jpg"), path
            for needle in needles:
                assert needle not in content, f"face pixels in clear in {path}"
    assert any(p.name == "outbox.db" for p in scanned), scanned  # the outbox held the events: ciphertext only


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_device_sends_and_keeps_no_image_in_clear(tmp_path, analyzer, clip, broker, caplog, mode):  # noqa: F811 - the imported clip fixture
    from edge import keys
    from edge.messaging.mqtt import MqttClient

    started = time.time() - 1
    state = tmp_path / "state"
    provision(state, analyzer, "cam-a", install=True)  # v1 installed: obama is listed
    pki = broker.pki
    relay = Relay(broker.host, broker.port)
    operator_x25519 = keys.generate_device_key()  # an X25519 key pair; the operator keeps the private half
    events_cfg = evidence_config(tmp_path, mode, operator_x25519)
    cfg = write_config(tmp_path / "edge.yaml", state, clip, device={"id": "cam-a"},
                       mqtt={"enabled": True, "host": "127.0.0.1", "port": relay.port, "ca_file": str(pki.ca),
                             "cert_file": str(pki.cert("cam-a")), "key_file": str(pki.key("cam-a")),
                             "status_interval_s": 0.5}, **({"events": events_cfg} if events_cfg else {}))
    operator = MqttClient(broker.client_settings("operator"), [(t, 1) for t in DEVICE_TOPICS])
    operator.start()
    operator.wait_connected(5)
    try:
        seen = run_and_collect(cfg, caplog, operator)
    finally:
        operator.stop()
        time.sleep(0.1)
        relay.close()

    # --- plaintext: every payload the device published ---
    events = check_payloads(seen, mode)
    # --- the wire: every byte sent towards the broker ---
    wire = check_wire(relay, seen, events, mode)

    if mode != "evidence":
        assert all(not sealed_chips(e) for e in events)
        assert any("evidence is off" in r.getMessage() for r in caplog.records)
        return
    # The operator's key provisioned: every event carries the track's best chip (and the second best when it fits),
    # ciphertext for that key bound to the event (no image signature in clear, checked above for every payload),
    # opening to a JPEG with that key and this event's context only.
    assert any("evidence is on" in r.getMessage() for r in caplog.records)
    jpegs = open_evidence(events, operator_x25519)
    # --- at rest: the exact face pixels that left sealed are nowhere in clear, neither on the wire nor on the
    # device's disk (its state directory: outbox, audit log, watchlist; and any file written to the temp dir) ---
    assert_no_face_pixels_in_clear(jpegs, wire, (state, Path(tempfile.gettempdir())), started)
