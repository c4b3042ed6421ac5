"""What a reviewer sees (issue 21): the captured faces (sealed in the event, opened with the operator's key, bound to
the event) beside the enrolled ones (the build's references/), the similarity bar, the quality in words, small
faces in the queue, both images with their hashes in the case export — and a plain sentence for each face that
cannot be shown."""

import base64
import hashlib
import json

import cv2
import numpy as np

from edge.keys import generate_device_key
from edge.messaging.thumbnail import encrypt_thumbnail, evidence_context
from edge.operator.views import quality_words, score_bar
from edge.watchlist.operator.references import References
import test_console
from test_console import make_console, new_event, session

users_db = test_console.users_db  # test_console's module-scoped fixture, requested below by name


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)  # a smooth picture, different per seed (a few KiB as JPEG)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC))[1].tobytes()


def build_dir(tmp_path, chips: dict[str, list[bytes]]):
    """A minimal watchlist build: meta.json (subjects, items) and references/ with the chips of each subject."""
    d = tmp_path / "build"
    (d / "references").mkdir(parents=True)
    ids, items = list(chips), []
    for subject, images in chips.items():
        for image in images:
            (d / "references" / f"{len(items):07d}.jpg").write_bytes(image)
            items.append(ids.index(subject))
    (d / "meta.json").write_text(json.dumps({"subjects": {"id": ids, "label": ids}, "items": items}))
    return References(d)


def sealed_event(seq, key, images, subject="subj-1", swap=False):
    ev = new_event(seq, subject=subject)
    for slot, image in enumerate(images, 1):
        context = evidence_context(ev["event_id"], 3 - slot if swap else slot)
        ev["thumbnail" if slot == 1 else "thumbnail2"] = encrypt_thumbnail(image, key.public_key(), context)
    return ev


def test_the_event_page_shows_captured_and_enrolled_faces_side_by_side(tmp_path, users_db):
    key = generate_device_key()
    captured, enrolled = [jpeg(1), jpeg(2)], [jpeg(3)]
    refs = build_dir(tmp_path, {"subj-1": enrolled, "subj-2": [jpeg(4), jpeg(5), jpeg(6)]})
    c = make_console(tmp_path / "c", users_db, thumbnail_key=key, references=refs)
    ev = sealed_event(20, key, captured)
    c.store.add([ev])
    alice, _ = session(c.app, "alice")
    page = alice.get(f"/events/{ev['event_id']}").text
    for src in ("evidence/1", "evidence/2", "reference/1"):
        assert f'src="/events/{ev["event_id"]}/{src}" width="160" height="160"' in page  # all at the same size
    assert "reference/2" not in page and 'id="score-bar"' in page
    assert "similarity 0.712, 0.057 over the threshold 0.655" in page
    for path, want in (("evidence/1", captured[0]), ("evidence/2", captured[1]), ("reference/1", enrolled[0]),
                       ("thumbnail", captured[0])):
        resp = alice.get(f"/events/{ev['event_id']}/{path}")
        assert resp.status_code == 200 and resp.content == want and resp.headers["content-type"] == "image/jpeg"
    assert alice.get(f"/events/{ev['event_id']}/reference/2").status_code == 404
    assert alice.get(f"/events/{ev['event_id']}/evidence/3").status_code == 404
    # the queue shows the best face small; the API says which slots exist
    assert f'src="/events/{ev["event_id"]}/evidence/1" width="48" height="48"' in alice.get("/").text
    assert next(e for e in alice.get("/api/events").json()["events"] if e["event_id"] == ev["event_id"])[
        "evidence"] == [1, 2]
    # the case export carries both faces and their hashes (a supervisor's right)
    sue, _ = session(c.app, "sue")
    case = sue.get(f"/api/events/{ev['event_id']}/case").json()["evidence"]
    assert [(e["kind"], e["n"]) for e in case["captured"] + case["reference"]] == [
        ("captured", 1), ("captured", 2), ("reference", 1)]
    for e, image in zip(case["captured"] + case["reference"], captured + enrolled, strict=True):
        assert base64.b64decode(e["base64"]) == image and e["sha256"] == hashlib.sha256(image).hexdigest()
    assert case["problems"] == []
    assert alice.get("/favicon.ico").status_code == 200
    c.audit.close()
    c.store.close()


def test_each_missing_face_is_said_plainly(tmp_path, users_db):
    key = generate_device_key()
    c = make_console(tmp_path / "c", users_db, thumbnail_key=key)  # no --watchlist: no enrolled faces
    bare = new_event(20)  # evidence off on the device
    moved = sealed_event(21, key, [jpeg(1), jpeg(2)], swap=True)  # sealed for other slots: must not open
    c.store.add([bare, moved])
    alice, _ = session(c.app, "alice")
    page = alice.get(f"/events/{bare['event_id']}").text
    assert "No face was sent with this event: evidence is off on cam-01" in page
    assert "No enrolled face to compare with: start the console with <code>--watchlist BUILD_DIR</code>" in page
    resp = alice.get(f"/events/{bare['event_id']}/evidence/1")
    assert resp.status_code == 404 and "evidence is off on it" in resp.text
    assert alice.get(f"/events/{moved['event_id']}/evidence/1").status_code == 422
    sue, _ = session(c.app, "sue")
    problems = sue.get(f"/api/events/{moved['event_id']}/case").json()["evidence"]["problems"]
    assert any("not sealed for this event" in p for p in problems) and any("no enrolled face" in p for p in problems)
    c.audit.close()
    c.store.close()
    sealed = make_console(tmp_path / "nokey", users_db)  # the console without the operator's key
    sealed.store.add([moved])
    bob, _ = session(sealed.app, "bob")
    assert "sealed to the operator's key: start the console with <code>--thumbnail-key</code>" in bob.get(
        f"/events/{moved['event_id']}").text
    assert bob.get(f"/events/{moved['event_id']}/evidence/1").status_code == 404
    sealed.audit.close()
    sealed.store.close()


def test_quality_in_words_and_the_bar():
    assert quality_words({"eye_distance_px": 48.3, "yaw": -0.1, "roll_deg": 8.8, "sharpness": 0.6}) == (
        "eyes 48 px apart, turned slightly left, tilted 9°, sharp")
    assert quality_words({"eye_distance_px": 22, "yaw": 0.02, "roll_deg": 2, "sharpness": 0.2}) == (
        "eyes 22 px apart (small face), facing the camera, blurred")
    assert quality_words({"yaw": 0.4}) == "turned far right (near profile)" and quality_words({}) == "-"
    bar = score_bar(0.71, 0.62, 0.2)
    assert (bar["fill"], bar["threshold"], bar["runner_up"], bar["over"]) == (227, 198, 163, True)
    under = score_bar(0.5, 0.62, None)
    assert under["over"] is False and under["runner_up"] is None and "0.120 under the threshold" in under["text"]
    assert score_bar(1.7, -3.0, 0.1)["fill"] == 320 and score_bar(1.7, -3.0, 0.1)["threshold"] == 0


def test_the_alert_budget_puts_the_prediction_beside_the_reviewers_findings():
    from edge.operator.views import alert_budget

    def device(name, version, searches, uptime_s, sealed=True):
        wl = {"version": version, "n_items": 1200, "n_subjects": 400,
              "sealed_for": {"match": 0.61, "fpir_target": 0.003, "predicted_fpir": 0.002} if sealed else {}}
        return {"device_id": name, "watchlist_version": version,
                "health": {"watchlist": wl, "counters": {"searches": searches}, "uptime_s": uptime_s}}

    devices = [device("a", 3, 8640, 86400.0), device("b", 3, 4320, 43200.0), device("c", 2, 999, 10.0),
               {"device_id": "d", "watchlist_version": 3, "health": {"watchlist": "junk", "uptime_s": "x"}}]
    day = 86400.0
    b = alert_budget(3, devices, {"pending": 2, "confirmed": 3, "rejected": 1, "first": 0.0, "last": day})
    assert (b["n_items"], b["n_subjects"], b["threshold"], b["fpir"]) == (1200, 400, 0.61, 0.002)
    assert b["searches_per_day"] == 2 * 8640 and b["devices_reporting"] == 2  # the device on v2 is not counted
    assert abs(b["predicted_false_per_day"] - 2 * 8640 * 0.002) < 1e-9
    assert b["reject_rate"] == 0.25 and b["observed_false_per_day"] == 1.0 and b["events"] == 6
    assert b["warning"] is None  # 1 a day observed vs 34.6 predicted
    flood = alert_budget(3, devices, {"pending": 0, "confirmed": 0, "rejected": 80, "first": 0.0, "last": day})
    assert flood["observed_false_per_day"] == 80 and "may be too big for its threshold" in flood["warning"]
    few = alert_budget(3, devices, {"pending": 0, "confirmed": 0, "rejected": 4, "first": 0.0, "last": 600.0})
    assert few["observed_false_per_day"] == 4 * 24 and few["warning"] is None  # < 5 decided: no verdict yet
    unknown = alert_budget(9, [device("e", 9, 10, 0.0, sealed=False)], None)
    assert unknown["fpir"] is None and unknown["searches_per_day"] is None and unknown["reject_rate"] is None
    assert unknown["predicted_false_per_day"] is None and unknown["events"] == 0


def test_a_build_with_hostile_files_shows_no_face_from_them_and_a_broken_meta_is_one_line(tmp_path):
    import os

    import pytest

    from edge.errors import DataError
    from edge.watchlist.operator.references import MAX_REFERENCE_BYTES

    refs = build_dir(tmp_path, {"subj-1": [jpeg(1), jpeg(2)], "subj-2": [jpeg(3)]})
    (refs.dir / "0000000.jpg").write_bytes(b"GIF89a not a jpeg")  # not a JPEG: skipped
    (refs.dir / "0000001.jpg").write_bytes(b"\xff\xd8\xff" + bytes(MAX_REFERENCE_BYTES))  # oversized: skipped
    os.remove(refs.dir / "0000002.jpg")
    os.symlink("/etc/passwd", refs.dir / "0000002.jpg")  # a link: never followed
    assert refs.images("subj-1") == [] and refs.images("subj-2") == []
    (tmp_path / "build" / "meta.json").write_text('{"subjects": {"id": ["a"]}, "items": [5]}')
    with pytest.raises(DataError, match=r"meta.json is not a watchlist build's metadata \(from `edge watchlist"):
        References(tmp_path / "build")
