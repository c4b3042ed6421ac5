"""Topic tree and payload schemas: round trips, every refusal's message, UUIDv7, encrypted thumbnails, fuzzing."""

import base64
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import ids as ids_module
from edge.messaging import payloads
from edge.errors import EdgeError
from edge.messaging.topics import TopicError, Topics, operator_filter, parse_topic
from edge.messaging.payloads import (
    MAX_THUMBNAIL_BYTES,
    PayloadError,
    Status,
    WatchlistState,
    decode_ack,
    decode_event,
    decode_status,
    decode_watchlist_state,
    encode_ack,
    encode_event,
    encode_status,
    encode_watchlist_state,
    make_event,
    stamp_published,
    uuid7,
    uuid7_unix_ms,
)
from edge.messaging.thumbnail import decrypt_thumbnail, encrypt_thumbnail

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) * 8 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(200))


def event(**changes) -> dict:
    fields = dict(device_id="cam-01", captured_at=1_764_000_000.25, subject_id="S-0042", watchlist_id="wl-north",
                  watchlist_version=3, embedder_id="dlib_resnet_v1_int8", similarity=0.71, threshold=0.62,
                  margin=0.12, track_id=17, chips_used=3,
                  quality={"eye_distance_px": 41.0, "sharpness": 88.5, "yaw": 0.1, "roll_deg": 2.0, "score": 0.93},
                  seq=1, label="Jane Doe", category="missing")
    fields.update(changes)
    return make_event(**fields)


def refused(mutate) -> str:
    """The PayloadError message for a valid encoded event changed by `mutate(dict)`."""
    obj = json.loads(encode_event(event()))
    mutate(obj)
    with pytest.raises(PayloadError) as err:
        decode_event(json.dumps(obj).encode())
    return str(err.value)


# ---------------------------------------------------------------------------------------------------------- topics

def test_topic_tree_for_one_device():
    t = Topics("cam-01")
    assert (t.events, t.events_ack, t.status) == ("edge/cam-01/events", "edge/cam-01/events/ack", "edge/cam-01/status")
    assert t.watchlist_manifest == "edge/cam-01/watchlist/manifest"
    assert t.watchlist_chunk(7, 0) == "edge/cam-01/watchlist/chunk/7/0"
    assert t.watchlist_chunks == "edge/cam-01/watchlist/chunk/+/+"
    assert t.watchlist_state == "edge/cam-01/watchlist/state"
    assert Topics(prefix="site-3/edge", device_id="cam.01_b").events == "site-3/edge/cam.01_b/events"


def test_parse_round_trips_every_kind():
    t = Topics("cam-01", prefix="fleet/edge")
    cases = {t.events: "events", t.events_ack: "events_ack", t.status: "status",
             t.watchlist_manifest: "watchlist_manifest", t.watchlist_state: "watchlist_state"}
    for topic, kind in cases.items():
        assert t.parse(topic) == ("cam-01", kind, (), None)
    assert parse_topic(t.watchlist_chunk(12, 345), "fleet/edge") == ("cam-01", "watchlist_chunk", (12, 345), None)
    assert parse_topic("edge/other-device/status") == ("other-device", "status", (), None)


@pytest.mark.parametrize("device", ["", "+", "#", "a/b", "cam+1", "x" * 65, "café", None])
def test_device_id_validation(device):
    with pytest.raises(TopicError) as err:
        Topics(device)
    assert str(err.value) == (f"device id {device!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"
                              " (no '+', '#' or '/')")


@pytest.mark.parametrize("prefix", ["", "edge/", "/edge", "a//b", "edge/+", "#"])
def test_prefix_validation(prefix):
    with pytest.raises(TopicError, match=r"topic prefix .* is invalid"):
        Topics("cam-01", prefix=prefix)


@pytest.mark.parametrize("topic", ["edge/cam-01/event", "edge/cam-01/events/ack/x", "edge/cam-01/watchlist/chunk/1",
                                   "edge/cam-01/watchlist/chunk/0/1", "edge/cam-01/watchlist/chunk/01/1",
                                   "edge/cam-01/watchlist/chunk/1/-1", "edge/cam-01", "edge/cam-01/"])
def test_parse_refuses_foreign_topics(topic):
    with pytest.raises(TopicError) as err:
        parse_topic(topic)
    assert str(err.value).startswith(f"topic {topic!r} is not one of ours: expected edge/<device>/ followed by")


def test_parse_messages_for_prefix_and_device():
    with pytest.raises(TopicError, match=r"^topic 'other/cam-01/events' is not under prefix 'edge'$"):
        parse_topic("other/cam-01/events")
    with pytest.raises(TopicError, match=r"^device id '\+' is invalid"):
        parse_topic("edge/+/events")
    with pytest.raises(TopicError, match=r"^watchlist chunk needs an integer version ≥ 1 and index ≥ 0, got 0/1$"):
        Topics("cam-01").watchlist_chunk(0, 1)


def test_operator_filters():
    assert operator_filter("events") == "edge/+/events"
    assert operator_filter("watchlist_state", "a/b") == "a/b/+/watchlist/state"
    assert operator_filter("watchlist_chunk") == "edge/+/watchlist/chunk/+/+"
    with pytest.raises(TopicError, match=r"^topic kind 'nope' is unknown; expected one of events, events_ack"):
        operator_filter("nope")


# -------------------------------------------------------------------------------------------------------- events

def test_event_round_trip_and_invariants():
    ev = event()
    raw = encode_event(ev)
    assert raw == json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()  # compact
    back = decode_event(raw)
    assert back == ev
    assert back["schema"] == "edge-event/1" and back["review_required"] is True and back["published_at"] is None
    assert uuid.UUID(back["event_id"]).version == 7
    stamped = decode_event(stamp_published(raw, 1_764_000_001.5))
    assert stamped["published_at"] == 1_764_000_001.5 and stamped["event_id"] == ev["event_id"]


def test_make_event_leaves_seq_to_the_outbox_and_encode_requires_it():
    ev = event(seq=None, label=None, category=None)
    assert ev["seq"] is None and "label" not in ev and "thumbnail" not in ev
    with pytest.raises(PayloadError, match=r"^event field 'seq' must be an integer ≥ 1, got None$"):
        encode_event(ev)


def test_make_event_refuses_bad_arguments():
    with pytest.raises(PayloadError, match=r"^event field 'similarity' must be a number in \[-1, 1\], got 1.2$"):
        event(similarity=1.2)
    with pytest.raises(PayloadError, match=r"^event field 'track_id' must be an integer ≥ 0, got -1$"):
        event(track_id=-1)
    with pytest.raises(PayloadError, match=r"^event field 'thumbnail' must be an encrypted object"):
        event(thumbnail=base64.b64encode(JPEG).decode())


def _set(key, value):
    return lambda obj: obj.__setitem__(key, value)


def _drop(key):
    return lambda obj: obj.pop(key)


@pytest.mark.parametrize("mutate, message", [
    (_set("schema", "edge-event/9"),
     "event schema 'edge-event/9' is not supported (this device understands edge-event/1)"),
    (_set("schema", "something-else"), "event schema 'something-else' is not 'edge-event/1'"),
    (_drop("schema"), "event has no 'schema' field (expected 'edge-event/1')"),
    (_drop("similarity"), "event has no 'similarity' field"),
    (_set("colour", "red"), "event has unknown field 'colour'"),
    (_set("jpeg", "/9j/4AAQ"),
     "event field 'jpeg' is refused: events never carry image bytes in clear (use an encrypted 'thumbnail')"),
    (_set("png", "iVBORw0KGgo"),
     "event field 'png' is refused: events never carry image bytes in clear (use an encrypted 'thumbnail')"),
    (_set("image", None),
     "event field 'image' is refused: events never carry image bytes in clear (use an encrypted 'thumbnail')"),
    (_set("review_required", False),
     "event field 'review_required' must be true: an event is a candidate for human review, never a verdict"),
    (_set("event_id", "not-a-uuid"), "event field 'event_id' must be a lowercase UUIDv7 string, got 'not-a-uuid'"),
    (_set("event_id", str(uuid.uuid4())), None),
    (_set("seq", 0), "event field 'seq' must be an integer ≥ 1, got 0"),
    (_set("seq", True), "event field 'seq' must be an integer ≥ 1, got True"),
    (_set("seq", "5"), "event field 'seq' must be an integer ≥ 1, got '5'"),
    (_set("seq", 2**63), "event field 'seq' must be an integer ≥ 1, got 9223372036854775808"),
    (_set("device_id", "cam/01"), "event field 'device_id' must be 1-64 characters from A-Z a-z 0-9 . _ -,"
                                  " got 'cam/01'"),
    (_set("captured_at", -1), "event field 'captured_at' must be a number in [0, 1e+11], got -1"),
    (_set("published_at", "now"), "event field 'published_at' must be a number in [0, 1e+11] or null, got 'now'"),
    (_set("similarity", 1.5), "event field 'similarity' must be a number in [-1, 1], got 1.5"),
    (_set("threshold", -1.01), "event field 'threshold' must be a number in [-1, 1], got -1.01"),
    (_set("margin", -0.1), "event field 'margin' must be a number in [0, 2], got -0.1"),
    (_set("watchlist_version", 0), "event field 'watchlist_version' must be an integer ≥ 1, got 0"),
    (_set("chips_used", 0), "event field 'chips_used' must be an integer ≥ 1, got 0"),
    (_set("subject_id", ""), "event field 'subject_id' must be a string of 1-256 characters, got ''"),
    (_set("label", 5), "event field 'label' must be a string of 1-256 characters or null, got 5"),
    (_set("label", "data:image/jpeg;base64,/9j/4AAQ"),
     "event field 'label' looks like image data; images never travel in clear"),
    (_set("quality", [1, 2]), "event field 'quality' must be an object of at most 32 figures, got [1, 2]"),
    (_set("quality", {"pose": {"yaw": 1}}),
     "event field 'quality.pose' must be a number, string, boolean or null, got {'yaw': 1}"),
    (_set("quality", {"crop": "/9j/4AAQSkZJRg"}),
     "event quality field 'crop' looks like image data; images never travel in clear"),
    (_set("thumbnail", "/9j/4AAQSkZJRg"), "event field 'thumbnail' must be an encrypted object (alg,"
                                          " ephemeral_public, nonce, ciphertext); raw image data is refused"),
    (_set("thumbnail", {"alg": "none", "ephemeral_public": "", "nonce": "", "ciphertext": ""}),
     "event thumbnail alg 'none' is not supported (expected X25519-HKDF-SHA256/AES-256-GCM)"),
    (_set("thumbnail", {"alg": "X25519-HKDF-SHA256/AES-256-GCM", "jpeg": ""}),
     "event thumbnail has unknown field 'jpeg'"),
    (_set("thumbnail", {"alg": "X25519-HKDF-SHA256/AES-256-GCM", "ephemeral_public": "AAAA", "nonce": "",
                        "ciphertext": ""}), "event thumbnail field 'ephemeral_public' must be base64 of 32 bytes"),
])
def test_event_refusals_name_the_cause(mutate, message):
    text = refused(mutate)
    if message is None:
        assert text.startswith("event field 'event_id' must be a lowercase UUIDv7 string, got '")
    else:
        assert text == message


@pytest.mark.parametrize("raw, message", [
    (b"x" * 16385, "event payload is 16385 bytes; the limit is 16384 bytes"),
    (b"\xff\xfe{}", "event payload is not UTF-8 text (invalid start byte)"),
    ("{}".encode("utf-16"), "event payload is not UTF-8 text (invalid start byte)"),
    (b'["\\ud800"]', "event payload is not UTF-8 text (surrogates not allowed)"),
    (b"[1]", "event payload must be a JSON object, got list"),
    (b"{", "event payload is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2"
           " (char 1)"),
    (b'{"seq":1,"seq":2}', "event payload is not valid JSON: duplicate key 'seq'"),
    (b'{"similarity":NaN}', "event payload is not valid JSON: NaN is not a JSON number"),
    (b'{"similarity":1e999}', "event payload is not valid JSON: Out of range float values are not JSON compliant"),
    (b"[" * 5000, "event payload is not valid JSON: maximum recursion depth exceeded while decoding a JSON array"
                  " from a unicode string"),
    ("not bytes", "event payload must be bytes, got str"),
])
def test_event_payload_level_refusals(raw, message):
    with pytest.raises(PayloadError) as err:
        decode_event(raw)
    assert str(err.value) == message
    assert isinstance(err.value, EdgeError)


# --------------------------------------------------------------------------------------------------------- UUIDv7

def test_uuid7_layout_and_time():
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert before <= uuid7_unix_ms(u) <= after
    assert uuid7_unix_ms(str(u)) == uuid7_unix_ms(u)


def test_uuid7_is_strictly_increasing_and_unique():
    ids = [uuid7() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids) and [str(u) for u in ids] == sorted(str(u) for u in ids)


def test_uuid7_monotonic_when_clock_stalls_or_goes_back(monkeypatch):
    ms = time.time_ns() // 1_000_000 + 86_400_000  # a day ahead: later than anything generated so far
    ticks = iter([ms * 10**6] * 5000 + [(ms - 60_000) * 10**6] * 10)  # a stalled ms (counter overflows), then -1 min
    monkeypatch.setattr(ids_module.time, "time_ns", lambda: next(ticks))
    ids = [uuid7() for _ in range(5010)]
    assert ids == sorted(ids) and len(set(ids)) == 5010
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert uuid7_unix_ms(ids[0]) == ms and ms + 1 <= uuid7_unix_ms(ids[-1]) <= ms + 3


# ----------------------------------------------------------------------------------------------------- thumbnails

@pytest.mark.parametrize("image", [JPEG, PNG])
def test_thumbnail_round_trip_and_never_in_clear(image):
    operator = X25519PrivateKey.generate()
    thumb = encrypt_thumbnail(image, operator.public_key())
    raw = encode_event(event(thumbnail=thumb))
    assert decrypt_thumbnail(decode_event(raw)["thumbnail"], operator) == image
    # neither the image's bytes nor its base64 (at any of the three byte alignments) appear in the payload
    assert image[:16] not in raw and b"\xff\xd8\xff" not in raw and b"\x89PNG" not in raw
    for pad in (b"", b"\0", b"\0\0"):
        clear_b64 = base64.b64encode(pad + image)[4 if pad else 0:][:20]
        assert clear_b64 not in raw
    for key in ("ephemeral_public", "nonce", "ciphertext"):
        assert image[:16] not in base64.b64decode(thumb[key])
    assert not thumb["ciphertext"].startswith(("/9j/", "iVBORw0KGgo"))


def test_thumbnail_raw_public_key_bytes_and_wrong_key():
    operator = X25519PrivateKey.generate()
    thumb = encrypt_thumbnail(JPEG, operator.public_key().public_bytes_raw())
    assert decrypt_thumbnail(thumb, operator) == JPEG
    with pytest.raises(PayloadError, match=r"^thumbnail cannot be decrypted with this operator key \(wrong key or"
                                           r" altered ciphertext\)$"):
        decrypt_thumbnail(thumb, X25519PrivateKey.generate())
    ct = bytearray(base64.b64decode(thumb["ciphertext"]))
    ct[0] ^= 1
    with pytest.raises(PayloadError, match=r"^thumbnail cannot be decrypted"):
        decrypt_thumbnail({**thumb, "ciphertext": base64.b64encode(bytes(ct)).decode()}, operator)


def test_thumbnail_limits():
    key = X25519PrivateKey.generate().public_key()
    with pytest.raises(PayloadError, match=r"^thumbnail must be JPEG or PNG bytes$"):
        encrypt_thumbnail(b"GIF89a....", key)
    big = JPEG[:4] + bytes(MAX_THUMBNAIL_BYTES)
    with pytest.raises(PayloadError, match=rf"^thumbnail is {len(big)} bytes; the limit is {MAX_THUMBNAIL_BYTES}"):
        encrypt_thumbnail(big, key)
    largest = JPEG[:4] + bytes(MAX_THUMBNAIL_BYTES - 4)  # the largest thumbnail still fits in an event
    ev = event(thumbnail=encrypt_thumbnail(largest, key), subject_id="s" * 256, label="l" * 256)
    assert len(encode_event(ev)) <= payloads.MAX_EVENT_BYTES


# ----------------------------------------------------------------------------------------- ack, status, watchlist

def test_ack_round_trip():
    raw = encode_ack([5, 3, 5, 1])
    assert json.loads(raw) == {"schema": "edge-ack/1", "seqs": [5, 3, 5, 1]}
    assert decode_ack(raw) == [1, 3, 5]
    assert decode_ack(encode_ack([])) == []
    assert decode_ack(encode_ack(list(range(1, 10_001)))) == list(range(1, 10_001))


@pytest.mark.parametrize("obj, message", [
    ({"schema": "edge-ack/2", "seqs": []}, "ack schema 'edge-ack/2' is not supported (this device understands"
                                           " edge-ack/1)"),
    ({"seqs": [1]}, "ack has no 'schema' field (expected 'edge-ack/1')"),
    ({"schema": "edge-ack/1"}, "ack has no 'seqs' field"),
    ({"schema": "edge-ack/1", "seqs": [1], "x": 1}, "ack has unknown field 'x'"),
    ({"schema": "edge-ack/1", "seqs": 5}, "ack field 'seqs' must be a list of at most 10000 seqs, got 5"),
    ({"schema": "edge-ack/1", "seqs": list(range(1, 10_002))},
     "ack field 'seqs' must be a list of at most 10000 seqs, got 10001 seqs"),
    ({"schema": "edge-ack/1", "seqs": [1, 0]}, "ack seqs must be integers in [1, 2^63-1], got 0"),
    ({"schema": "edge-ack/1", "seqs": [None]}, "ack seqs must be integers in [1, 2^63-1], got None"),
    ({"schema": "edge-ack/1", "seqs": [1.0]}, "ack seqs must be integers in [1, 2^63-1], got 1.0"),
])
def test_ack_refusals(obj, message):
    with pytest.raises(PayloadError) as err:
        decode_ack(json.dumps(obj).encode())
    assert str(err.value) == message


def test_encode_ack_validates_too():
    with pytest.raises(PayloadError, match=r"^ack seqs must be integers in \[1, 2\^63-1\], got -3$"):
        encode_ack([1, -3])


def test_status_round_trip_and_refusals():
    health = {"fps": 9.5, "drops": {"capture": 3}, "temp_c": 61.2, "stages": [1, 2]}
    assert decode_status(encode_status("online", health)) == Status("online", health)
    assert decode_status(encode_status("offline")) == Status("offline", {})
    with pytest.raises(PayloadError, match=r"^status field 'state' must be 'online' or 'offline', got 'up'$"):
        encode_status("up", {})
    with pytest.raises(PayloadError, match=r"^status field 'health' must be a JSON object, got \[1\]$"):
        decode_status(b'{"schema":"edge-status/1","state":"online","health":[1]}')
    with pytest.raises(PayloadError, match=r"^status cannot be encoded as JSON: Out of range float values"):
        encode_status("online", {"fps": float("nan")})
    with pytest.raises(PayloadError, match=r"^status schema 'edge-status/2' is not supported \(this device"
                                           r" understands edge-status/1\)$"):
        decode_status(b'{"schema":"edge-status/2","state":"online","health":{}}')


@pytest.mark.parametrize("args", [(4, "installed", None, None), (4, "rejected", "bad_signature",
                                  "bundle signature does not verify"), (None, "rejected", "expired", None),
                                  (None, "none", None, None), (2, "stale", "expired", "watchlist v2 expired")])
def test_watchlist_state_round_trip(args):
    assert decode_watchlist_state(encode_watchlist_state(*args)) == WatchlistState(*args)


@pytest.mark.parametrize("args, message", [
    ((1, "done", None, None), "watchlist state field 'state' must be one of installed, rejected, stale, none, wiped,"
                              " got 'done'"),
    ((None, "installed", None, None), "watchlist state 'installed' needs an installed_version"),
    ((3, "none", None, None), "watchlist state 'none' cannot have an installed_version"),
    ((None, "rejected", None, None), "watchlist state 'rejected' needs a reason"),
    ((None, "rejected", "Bad Signature!", None), "watchlist state field 'reason' must be a short code like"
                                                 " 'bad_signature', got 'Bad Signature!'"),
    ((0, "installed", None, None), "watchlist state field 'installed_version' must be an integer ≥ 1, got 0"),
    ((1, "installed", None, "x" * 1025), "watchlist state field 'message' must be a string of 1-1024 characters,"
                                         " got '" + "x" * 56 + "..."),  # long values are cut to 60 characters
])
def test_watchlist_state_refusals(args, message):
    with pytest.raises(PayloadError) as err:
        encode_watchlist_state(*args)
    assert str(err.value) == message
    obj = {"schema": "edge-watchlist-state/1", "installed_version": args[0], "state": args[1], "reason": args[2],
           "message": args[3]}
    with pytest.raises(PayloadError) as err:
        decode_watchlist_state(json.dumps(obj).encode())
    assert str(err.value) == message


# -------------------------------------------------------------------------------------------------------- fuzzing

DECODERS = [decode_event, decode_ack, decode_status, decode_watchlist_state]
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30)


def only_payload_errors(data) -> None:
    for decode in DECODERS:
        try:
            decode(data)
        except PayloadError:
            pass


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data):
    only_payload_errors(data)


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json(value):
    only_payload_errors(json.dumps(value).encode())


VALID = [json.loads(encode_event(event())), json.loads(encode_ack([1, 2])),
         json.loads(encode_status("online", {"fps": 1})), json.loads(encode_watchlist_state(1, "installed"))]
FIELDS = sorted({key for obj in VALID for key in obj} | {"thumbnail", "jpeg", "label"})


@FUZZ
@given(st.sampled_from(VALID), st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
       st.lists(st.sampled_from(FIELDS), max_size=2))
def test_fuzz_mutated_valid_payloads(base, changes, removed):
    obj = {k: v for k, v in {**base, **changes}.items() if k not in removed}
    data = json.dumps(obj).encode()
    only_payload_errors(data)
    try:
        ev = decode_event(data)
    except PayloadError:
        return
    assert decode_event(encode_event(ev)) == ev  # whatever is accepted re-encodes to itself
