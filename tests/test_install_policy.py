"""The install policy as a pure function (`edge.watchlist.device.policy`): tables of (what the device holds, what is
offered, the clock) → decision, with no disk, no keys and no store; and the install vocabulary
(`edge.install_state`): every reason code the code base emits is an `InstallReason`, and `InstalledState.to_dict()`
is the dict the status heartbeat has always carried."""

import ast
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge.install_state import InstalledState, InstallReason, InstallResult, Rejection, Serving
from edge.watchlist.device.policy import (WIPED, Accept, AcceptWipe, Holding, Offered, Refuse, decide_install,
                                          decide_wipe, record_conflict)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
A, B, C = "a" * 64, "b" * 64, "c" * 64
EMB = "e" * 64
R = InstallReason

#: a device running embedder mfn/EMB that holds nothing
FRESH = Holding("cam1", "mfn", EMB)
#: … that serves v3 (content A) of a group list
ON_V3 = replace(FRESH, floor=3, content=A, version=3, audience="group:north")
#: … whose v3 was wiped
WIPED_V3 = replace(FRESH, floor=3, content=WIPED)
#: … whose installed v3 no longer verifies (the floor is what the file claims; nothing verified is held)
BROKEN_V3 = replace(FRESH, floor=3)


def full(version: int, content: str = A, **kw) -> Offered:
    facts = dict(watchlist_id="wl", version=version, kind="full", content_sha256=content, embedder_id="mfn",
                 embedder_sha256=EMB, expires="2025-07-01T00:00:00Z", audience="group:north", n_items=12)
    return Offered(**{**facts, **kw})


def delta(version: int, base: int, base_content: str = A, content: str = B) -> Offered:
    return full(version, content, kind="delta", base_version=base, base_content=base_content)


INSTALLS = [
    # (case, holding, offered, decision)
    ("a first list", FRESH, full(1),
     Accept(R.INSTALLED, "installed watchlist wl v1 (12 items, expires 2025-07-01T00:00:00Z)")),
    ("a newer version", ON_V3, full(4, B), Accept(R.INSTALLED, "installed watchlist wl v4 (12 items, expires"
                                                               " 2025-07-01T00:00:00Z)")),
    ("the same version and content", ON_V3, full(3), Accept(R.ALREADY_INSTALLED, "watchlist wl v3 is already"
                                                                                 " installed")),
    ("an older version", ON_V3, full(2), Refuse(R.ROLLBACK, "watchlist wl v2 refused: version 2 is older than the"
                                                            " installed version 3 (rollback)")),
    ("the same version, other content", ON_V3, full(3, B),
     Refuse(R.SAME_VERSION_DIFFERENT_CONTENT, "watchlist wl v3 refused: version 3 is already installed with different"
                                              " content; a changed watchlist needs a new version")),
    ("the wiped version again", WIPED_V3, full(3),
     Refuse(R.SAME_VERSION_DIFFERENT_CONTENT, "watchlist wl v3 refused: version 3 was wiped; a changed watchlist"
                                              " needs a new version")),
    ("below a wiped version", WIPED_V3, full(2), Refuse(R.ROLLBACK, "watchlist wl v2 refused: version 2 is older"
                                                                    " than the installed version 3 (rollback)")),
    ("the claimed version repairs a broken install", BROKEN_V3, full(3),
     Accept(R.INSTALLED, "installed watchlist wl v3 (12 items, expires 2025-07-01T00:00:00Z)")),
    ("another embedder", ON_V3, full(4, embedder_id="arcface", embedder_sha256="f" * 64),
     Refuse(R.WRONG_EMBEDDER, "watchlist wl v4 refused: it was built for embedder arcface (sha256 ffffffffffff…),"
                              " this device runs mfn (sha256 eeeeeeeeeeee…): re-enroll the gallery in this device's"
                              " embedding space with `edge watchlist build --gallery CSV` (its --embedder) and seal"
                              " it again, or set the device's vision.embedder to the list's")),
    ("the same embedder id, other weights", FRESH, full(1, embedder_sha256="f" * 64), R.WRONG_EMBEDDER),
    ("expired", ON_V3, full(4, expires="2025-06-01T12:00:00Z"),
     Refuse(R.EXPIRED, "bundle wl v4 expired at 2025-06-01T12:00:00Z: the watchlist is stale; ask the operator for a"
                       " fresh bundle")),
    ("a delta on the held version", ON_V3, delta(4, 3),
     Accept(R.INSTALLED, "installed watchlist wl v4 from a delta on v3 (12 items, expires 2025-07-01T00:00:00Z)")),
    ("a delta on another version", ON_V3, delta(5, 4),
     Refuse(R.BASE_MISSING, "watchlist wl v5 refused: it is a delta on v4 and this device holds v3 (or other"
                            " content): the full version is needed")),
    ("a delta on other content", ON_V3, delta(4, 3, base_content=C), R.BASE_MISSING),
    ("a delta with nothing held", FRESH, delta(2, 1),
     Refuse(R.BASE_MISSING, "watchlist wl v2 refused: it is a delta on v1 and this device holds nothing (or other"
                            " content): the full version is needed")),
    ("a delta on a wiped version", WIPED_V3, delta(4, 3), R.BASE_MISSING),
    # order: expiry, then embedder, then the floor
    ("expired and for another embedder", ON_V3, full(2, expires="2025-01-01T00:00:00Z", embedder_id="x"), R.EXPIRED),
    ("another embedder and older", ON_V3, full(2, embedder_id="x"), R.WRONG_EMBEDDER),
    ("older, as a delta", ON_V3, delta(2, 1), R.ROLLBACK),
]


@pytest.mark.parametrize("case, holding, offered, want", INSTALLS, ids=[c[0] for c in INSTALLS])
def test_decide_install(case, holding, offered, want):
    got = decide_install(holding, offered, NOW)
    if isinstance(want, InstallReason):
        assert got.reason is want and isinstance(got, Refuse), got
    else:
        assert got == want and type(got) is type(want)


def test_decide_install_touches_nothing_and_depends_only_on_its_arguments():
    offered = full(4, B)
    decisions = {decide_install(ON_V3, offered, NOW) for _ in range(3)}
    assert len(decisions) == 1
    assert decide_install(ON_V3, offered, datetime(2026, 1, 1, tzinfo=timezone.utc)).reason is R.EXPIRED


def test_offered_of_a_manifest():
    manifest = {"watchlist_id": "wl", "version": 4, "kind": "delta", "content_sha256": B,
                "embedder": {"id": "mfn", "sha256": EMB}, "expires": "2025-07-01T00:00:00Z",
                "audience": "group:north", "n_items": 12, "base": {"version": 3, "content_sha256": A}}
    assert Offered.of(manifest) == delta(4, 3)
    assert Offered.of({**manifest, "kind": "full", "base": None, "content_sha256": A}) == full(4)
    assert delta(4, 3).bundle_label == "bundle wl v4 (delta on v3)" and full(4).title == "watchlist wl v4"


def statement(audience: str, upto: int) -> dict:
    return {"format": "edge-wl-wipe/1", "audience": audience, "upto_version": upto, "issued": "2025-06-01T00:00:00Z",
            "key_id": "0" * 16}


WIPES = [
    ("the group of the held list", ON_V3, statement("group:north", 3),
     AcceptWipe(3, "watchlist wiped: versions up to v3 are refused from now on")),
    ("this device, beyond the held version", ON_V3, statement("device:cam1", 5),
     AcceptWipe(5, "watchlist wiped: versions up to v5 are refused from now on")),
    ("another group", ON_V3, statement("group:south", 3),
     Refuse(R.NOT_FOR_THIS_DEVICE, "wipe for group:south refused: this device holds a watchlist for group:north")),
    ("another device", ON_V3, statement("device:cam2", 3), R.NOT_FOR_THIS_DEVICE),
    ("an older statement", ON_V3, statement("group:north", 2),
     Refuse(R.REPLAYED_WIPE, "wipe up to v2 refused: v3 is newer (an old or replayed statement)")),
    ("a group's with nothing held", FRESH, statement("group:north", 3),
     Refuse(R.NOT_FOR_THIS_DEVICE, "wipe for group:north refused: nothing is installed from it")),
    ("this device's with nothing held", FRESH, statement("device:cam1", 3),
     AcceptWipe(3, "watchlist wiped: versions up to v3 are refused from now on")),
    ("a replay after the wipe", WIPED_V3, statement("device:cam1", 3),
     Refuse(R.REPLAYED_WIPE, "wipe up to v3 refused: nothing is installed and versions up to v3 are already"
                             " refused")),
    ("a group's replay after the wipe", WIPED_V3, statement("group:north", 2), R.REPLAYED_WIPE),
    ("this device's, over a floor from a broken file", BROKEN_V3, statement("device:cam1", 3),
     AcceptWipe(3, "watchlist wiped: versions up to v3 are refused from now on")),
    ("a group's, over a floor from a broken file", BROKEN_V3, statement("group:north", 3), R.REPLAYED_WIPE),
    ("a wider wipe after a wipe", WIPED_V3, statement("device:cam1", 4),
     AcceptWipe(4, "watchlist wiped: versions up to v4 are refused from now on")),
]


@pytest.mark.parametrize("case, holding, st, want", WIPES, ids=[c[0] for c in WIPES])
def test_decide_wipe(case, holding, st, want):
    got = decide_wipe(holding, st)
    if isinstance(want, InstallReason):
        assert isinstance(got, Refuse) and got.reason is want, got
    else:
        assert got == want and type(got) is type(want)


@pytest.mark.parametrize("record, version, content, want", [
    ((3, A), 3, A, None),
    ((3, A), 4, B, None),  # a power cut between the bundle and its record
    ((3, A), 2, A, Refuse(R.ROLLBACK, "installed watchlist v2 is older than v3, the highest this device accepted"
                                      " (rolled back while stopped?)")),
    ((3, A), 3, B, Refuse(R.SAME_VERSION_DIFFERENT_CONTENT, "installed watchlist v3 is not the bundle this device"
                                                            " accepted as that version")),
    ((3, WIPED), 3, A, R.SAME_VERSION_DIFFERENT_CONTENT),
])
def test_record_conflict(record, version, content, want):
    got = record_conflict(record, version, content)
    if isinstance(want, InstallReason):
        assert got is not None and got.reason is want
    else:
        assert got == want
    if got is not None:  # still a (reason, message) pair for the CLI and the state check
        reason, message = got
        assert (reason, message) == (got.reason, got.message)


# --------------------------------------------------------------------------------------------- the vocabulary

def test_installed_state_to_dict_is_the_published_dict():
    none = InstalledState(Serving.NONE)
    assert json.dumps(none.to_dict()) == ('{"version": null, "watchlist_id": null, "state": "none", "expires": null,'
                                          ' "last_rejection": null}')
    rejected = InstalledState("wiped", last_rejection=Rejection(R.REPLAYED_WIPE, "old", "2025-06-01T12:00:00Z"))
    assert rejected.state is Serving.WIPED and not rejected.installed
    assert json.dumps(rejected.to_dict()["last_rejection"]) == ('{"reason": "replayed_wipe", "message": "old",'
                                                                ' "at": "2025-06-01T12:00:00Z"}')
    ok = InstalledState(Serving.STALE, 3, "wl", "2025-07-01T00:00:00Z", None, 12, 5, {"match": 0.42})
    assert json.dumps(ok.to_dict()) == ('{"version": 3, "watchlist_id": "wl", "state": "stale", "expires":'
                                        ' "2025-07-01T00:00:00Z", "last_rejection": null, "n_items": 12,'
                                        ' "n_subjects": 5, "sealed_for": {"match": 0.42}}')
    assert all(type(v) is str for v in (ok.to_dict()["state"], rejected.to_dict()["last_rejection"]["reason"]))


def test_reasons_are_their_strings():
    result = InstallResult(False, "rollback", 2, "older")  # a bare code is taken, and becomes the enum
    assert result.reason is R.ROLLBACK and result.reason == "rollback" and f"{result.reason}" == "rollback"
    assert json.dumps({"reason": result.reason}) == '{"reason": "rollback"}'
    with pytest.raises(ValueError):
        InstallResult(False, "no_such_reason", None, "")


EDGE = Path(__file__).resolve().parent.parent / "edge"
#: Calls whose first argument is a reason code, and keyword arguments that carry one.
REASON_CALLS = {"BundleError", "SchemaError", "_Refused", "Refuse", "_reject", "InstallResult", "Rejection"}


def _reason_literals() -> set[tuple[str, str]]:
    """(module, code) for every string literal passed as a reason in edge/ (first argument of REASON_CALLS, or a
    `reason=` keyword)."""
    found = set()
    for path in EDGE.rglob("*.py"):
        rel = path.relative_to(EDGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            args = []
            if name in REASON_CALLS:
                args = node.args[1:2] if name == "InstallResult" else node.args[:1]
            args += [k.value for k in node.keywords if k.arg == "reason"]
            found |= {(rel, a.value) for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return found


def test_every_reason_code_in_the_code_base_is_an_install_reason():
    literals = _reason_literals()
    codes = {code for _, code in literals}
    assert {"bad_magic", "truncated", "bad_wipe", "malformed_manifest", "unsupported_format"} <= codes  # it finds them
    unknown = sorted((rel, code) for rel, code in literals
                     if code not in set(InstallReason) and not rel.startswith(("vision/", "operator/", "evaluation/")))
    assert not unknown, f"reason codes that are no InstallReason (add them, or the store would fail on them): {unknown}"
