"""Delta watchlist versions: diff/apply semantics, the delta byte format and its refusals, determinism of the
rebuilt index, and query equivalence of a delta-applied list with the full bundle of the same version."""

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.canonical import canonical_json
from edge.watchlist import delta as D
from edge.watchlist.operator.diff import diff
from edge.watchlist.index import index_for
from edge.watchlist.operator.build import PCA_MIN_ITEMS, make_payload
from edge.watchlist.device.matcher import Watchlist
from edge.watchlist.payload import (SUBJECT_FIELDS, Payload, content_sha256, pack, split_templates, template_dim,
                                    unpack)

DIM = 16
FUSION = {"secondary": "second", "dim2": 8, "scale1": 0.6, "scale2": 0.4, "offset": 0.0}


def _unit(rng, n, dim=DIM):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _subject(sid, label=None, category="test", expires=None):
    return {"id": sid, "label": label or f"Label {sid}", "category": category, "expires": expires}


def build(entries, thresholds=None, n_trees=2, fused=False, dim=DIM, seed=0):
    """entries: [(subject dict, (k, dim) vectors)] in order → a payload (k templates for that subject)."""
    vectors, items, subjects, second = [], [], [], []
    for s, (subject, vs) in enumerate(entries):
        subjects.append(subject)
        for _k, v in enumerate(vs):
            vectors.append(v)
            items.append(s)
            # The second embedding follows from the template (so an unchanged subject keeps both).
            digest = hashlib.sha256(np.asarray(v).tobytes()).digest()
            second.append(_unit(np.random.default_rng([seed, *np.frombuffer(digest[:8], np.uint32)]), 1,
                                FUSION["dim2"])[0])
    kwargs = dict(vectors2=np.stack(second), fusion=FUSION) if fused else {}
    return make_payload(np.stack(vectors), items, subjects, n_trees=n_trees, thresholds=thresholds or {}, **kwargs)


def by_subject(p: Payload) -> dict:
    """subject id → (label, category, expires, template rows as bytes in order): the content, independent of order."""
    cols = p.meta["subjects"]
    q, s = split_templates(p.templates, len(p.meta["items"]), template_dim(p.meta))
    out = {sid: (cols["label"][i], cols["category"][i], cols["expires"][i], []) for i, sid in enumerate(cols["id"])}
    for row, subj in enumerate(p.meta["items"]):
        out[cols["id"][subj]][3].append(q[row].tobytes() + s[row].astype("<f4").tobytes())
    return {k: (a, b, c, tuple(rows)) for k, (a, b, c, rows) in out.items()}


@pytest.fixture(scope="module")
def pair_entries():
    """A base of six subjects and a new version: s1 removed, s2 relabelled, s3's templates changed, s4's category
    and expiry changed, s5 unchanged, n1 (two templates) and n2 added, new thresholds."""
    rng = np.random.default_rng(1)
    t = {f"s{i}": _unit(rng, 1 + i % 2) for i in range(6)}
    base_entries = [(_subject(sid), t[sid]) for sid in ("s0", "s1", "s2", "s3", "s4", "s5")]
    new_entries = [(_subject("n1"), _unit(rng, 2)),
                   (_subject("s0"), t["s0"]),
                   (_subject("s2", label="Renamed"), t["s2"]),
                   (_subject("s3"), _unit(rng, 3)),
                   (_subject("s4", category="vip", expires="2030-01-01"), t["s4"]),
                   (_subject("s5"), t["s5"]),
                   (_subject("n2"), _unit(rng, 1))]
    return base_entries, new_entries


@pytest.fixture(scope="module")
def pair(pair_entries):
    base_entries, new_entries = pair_entries
    return (build(base_entries, {"match": 0.5, "margin": 0.02}),
            build(new_entries, {"match": 0.61, "margin": 0.03, "calibrated_for_n": 11}))


def test_diff_lists_removed_added_updated_and_carries_thresholds(pair):
    base, new = pair
    d = diff(base, new)
    assert d.base_content_sha256 == content_sha256(pack(base))
    # Gone subjects first (in base order), then those whose templates changed (removed and added again).
    assert d.removed == ["s1", "s3"]
    assert d.updated == {"s2": {"label": "Renamed"}, "s4": {"category": "vip", "expires": "2030-01-01"}}
    assert d.added["id"] == ["n1", "s3", "n2"] and d.n_added == 3  # in new's order
    assert d.added["label"] == ["Label n1", "Label s3", "Label n2"]
    assert d.added_items == [0, 0, 1, 1, 1, 2]  # n1: 2 templates, s3: 3, n2: 1
    assert len(d.templates) == 6 * (DIM + 4)
    assert d.thresholds == {"match": 0.61, "margin": 0.03, "calibrated_for_n": 11}


def test_a_metadata_only_change_is_an_update_and_moves_no_templates(pair):
    base, _ = pair
    cols = base.meta["subjects"]
    meta = dict(base.meta, subjects=dict(cols, label=["Other" if s == "s0" else lab
                                                      for s, lab in zip(cols["id"], cols["label"], strict=True)]))
    d = diff(base, Payload(base.index, meta, base.templates))
    assert (d.removed, d.updated, d.added_items, d.templates) == ([], {"s0": {"label": "Other"}}, [], b"")
    assert d.added == {f: [] for f in SUBJECT_FIELDS}


def test_apply_holds_exactly_the_new_content(pair):
    base, new = pair
    full = D.apply(base, diff(base, new))
    assert by_subject(full) == by_subject(new)
    assert full.meta["thresholds"] == new.meta["thresholds"]
    # Deterministic order: the kept base subjects in base order, then the added ones in new's order.
    assert full.meta["subjects"]["id"] == ["s0", "s2", "s4", "s5", "n1", "s3", "n2"]
    assert full.index == index_for(full.meta, full.templates)
    assert unpack(pack(full)).meta == full.meta


def test_apply_of_a_fused_watchlist_keeps_both_embeddings(pair_entries):
    base_entries, new_entries = pair_entries
    base, new = build(base_entries, fused=True), build(new_entries, {"match": 0.7}, fused=True)
    assert template_dim(base.meta) == DIM + FUSION["dim2"]
    d = diff(base, new)
    assert d.removed == ["s1", "s3"] and set(d.updated) == {"s2", "s4"}  # unchanged subjects keep both embeddings
    assert len(d.templates) == 6 * (DIM + FUSION["dim2"] + 4)
    full = unpack(D.apply_bytes(pack(base), D.pack_delta(d)))
    assert by_subject(full) == by_subject(new)
    assert full.meta["fusion"] == FUSION and full.meta["thresholds"] == {"match": 0.7}


def test_an_empty_delta_rebuilds_the_base_byte_for_byte(pair):
    base, _ = pair
    d = diff(base, base)
    assert (d.removed, d.updated, d.n_added) == ([], {}, 0)
    assert pack(D.apply(base, d)) == pack(base)  # the device's rebuild is the operator's build


def test_pack_unpack_round_trip_and_apply_bytes(pair):
    base, new = pair
    d = diff(base, new)
    packed = D.pack_delta(d)
    assert packed.startswith(D.MAGIC)
    assert D.unpack_delta(packed) == d
    assert D.pack_delta(D.unpack_delta(packed)) == packed
    assert D.apply_bytes(pack(base), packed) == pack(D.apply(base, d))


def test_two_applies_give_byte_identical_payloads(pair):
    base, new = pair
    d1, d2 = diff(base, new), diff(base, new)
    assert D.pack_delta(d1) == D.pack_delta(d2)
    a, b = pack(D.apply(base, d1)), D.apply_bytes(pack(base), D.pack_delta(d2))
    assert a == b and content_sha256(a) == content_sha256(b)


# ------------------------------------------------------------------------------------------- refusals


def test_apply_on_the_wrong_base_is_refused(pair):
    base, new = pair
    d = diff(base, new)
    with pytest.raises(D.DeltaError, match="not the version it was made from"):
        D.apply(new, d)
    with pytest.raises(D.DeltaError, match="not the version it was made from"):
        D.apply_bytes(pack(new), D.pack_delta(d))
    # Same subjects, other thresholds: other content, so also the wrong base.
    other = Payload(base.index, dict(base.meta, thresholds={"match": 0.9}), base.templates)
    with pytest.raises(D.DeltaError, match="not the version it was made from"):
        D.apply(other, d)


def test_apply_refuses_a_delta_naming_unknown_subjects_or_duplicates(pair):
    base, new = pair
    d = diff(base, new)
    sha = d.base_content_sha256
    fields = dict(added=d.added, added_items=d.added_items, templates=d.templates, thresholds={})
    with pytest.raises(D.DeltaError, match="names 1 subject"):
        D.apply(base, D.Delta(sha, ["ghost"], {}, **fields))
    with pytest.raises(D.DeltaError, match="names 1 subject"):
        D.apply(base, D.Delta(sha, [], {"ghost": {"label": "x"}}, **fields))
    with pytest.raises(D.DeltaError, match="both removes and updates"):
        D.apply(base, D.Delta(sha, ["s0"], {"s0": {"label": "x"}}, **fields))
    with pytest.raises(D.DeltaError, match="already holds"):  # adds s0 without removing it
        dup = dict(fields, added={f: [v if f != "id" else "s0" for v in d.added[f]] for f in SUBJECT_FIELDS})
        D.apply(base, D.Delta(sha, [], {}, **dup))


def test_apply_bytes_refuses_templates_of_the_wrong_length(pair):
    base, new = pair
    d = diff(base, new)
    short = D.Delta(d.base_content_sha256, d.removed, d.updated, d.added, d.added_items, d.templates[:-1],
                    d.thresholds)
    with pytest.raises(D.DeltaError, match="templates hold"):
        D.apply_bytes(pack(base), D.pack_delta(short))


@pytest.mark.parametrize("change, what", [("dim", "'dim'"), ("fusion", "'fusion'")])
def test_a_layout_change_is_refused_at_diff(pair, change, what):
    base, _ = pair
    rng = np.random.default_rng(3)
    if change == "dim":
        other = build([(_subject("s0"), _unit(rng, 1, DIM * 2))], dim=DIM * 2)
    else:
        other = build([(_subject("s0"), _unit(rng, 1))], fused=True)
    with pytest.raises(D.DeltaError, match=f"differ in {what}.*seal a full version"):
        diff(base, other)
    with pytest.raises(D.DeltaError, match=f"differ in {what}"):
        diff(other, base)


def _frame(header, templates=b"", n_templates=None, raw_header=None):
    h = raw_header if raw_header is not None else canonical_json(header)
    n = len(templates) if n_templates is None else n_templates
    return D.MAGIC + struct.pack(">Q", len(h)) + h + struct.pack(">Q", n) + templates


def _good_header(n_added=1):
    return {"base_content_sha256": "0" * 64, "removed": ["a"], "updated": {"b": {"label": "B"}},
            "added": {f: [f"x{i}" for i in range(n_added)] for f in SUBJECT_FIELDS}, "added_items": [0],
            "thresholds": {"match": 0.5}}


def _without(key):
    h = _good_header()
    del h[key]
    return h


MALFORMED = {
    "empty": b"",
    "bad magic": b"EWLDLT2\n" + _frame(_good_header())[8:],
    "magic only": D.MAGIC,
    "short length field": D.MAGIC + b"\x00\x00\x01",
    "header not json": _frame(None, raw_header=b"{not json"),
    "header not utf-8": _frame(None, raw_header=b'{"\xff\xfe": 1}'),
    "header too deep": _frame(None, raw_header=b"[" * 100_000 + b"]" * 100_000),
    "header a list": _frame(["base_content_sha256"]),
    "missing field": _frame(_without("thresholds")),
    "extra field": _frame(dict(_good_header(), index="x")),
    "removed not strings": _frame(dict(_good_header(), removed=[1])),
    "removed not a list": _frame(dict(_good_header(), removed="a")),
    "updated not a dict": _frame(dict(_good_header(), updated=[])),
    "updated changes the id": _frame(dict(_good_header(), updated={"b": {"id": "c"}})),
    "updated unknown field": _frame(dict(_good_header(), updated={"b": {"photo": "x"}})),
    "updated entry not a dict": _frame(dict(_good_header(), updated={"b": "label"})),
    "added missing a column": _frame(dict(_good_header(), added={"id": ["x"], "label": ["x"], "category": ["x"]})),
    "added extra column": _frame(dict(_good_header(), added=dict(_good_header()["added"], photo=["x"]))),
    "added unequal columns": _frame(dict(_good_header(), added=dict(_good_header()["added"], label=[]))),
    "added_items out of range": _frame(dict(_good_header(), added_items=[1])),
    "added_items negative": _frame(dict(_good_header(), added_items=[-1])),
    "added_items bool": _frame(dict(_good_header(), added_items=[False])),
    "added_items float": _frame(dict(_good_header(), added_items=[0.0])),
    "thresholds not a dict": _frame(dict(_good_header(), thresholds=[0.5])),
    "base hash not a string": _frame(dict(_good_header(), base_content_sha256=None)),
    "templates shorter than declared": _frame(_good_header(), b"\x00" * 10, n_templates=20),
    "trailing bytes": _frame(_good_header(), b"\x00" * 20, n_templates=10),
    "templates length field missing": D.MAGIC + struct.pack(">Q", 2) + b"{}",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_unpack_delta_refuses_malformed_input(name):
    with pytest.raises(D.DeltaError):
        D.unpack_delta(MALFORMED[name])


def test_the_malformed_table_is_built_around_a_valid_delta():
    """The refusal cases above differ from this accepted frame in one respect each."""
    d = D.unpack_delta(_frame(_good_header(), b"\x00" * 20))
    assert d.removed == ["a"] and d.n_added == 1 and len(d.templates) == 20


def test_unpack_delta_refuses_every_truncation(pair):
    base, new = pair
    packed = D.pack_delta(diff(base, new))
    for n in range(len(packed)):
        with pytest.raises(D.DeltaError):
            D.unpack_delta(packed[:n])
    with pytest.raises(D.DeltaError, match="truncated or has trailing bytes"):
        D.unpack_delta(packed + b"\x00")


@pytest.mark.parametrize("column", [5, "xy"])
def test_unpack_delta_refuses_added_columns_that_are_not_lists(column):
    header = dict(_good_header(), added={f: column for f in SUBJECT_FIELDS}, added_items=[])
    with pytest.raises(D.DeltaError):
        D.unpack_delta(_frame(header))


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
def test_unpack_delta_never_fails_with_anything_but_delta_error(data):
    """Random byte edits to a valid delta: either a Delta with well-typed fields, or DeltaError."""
    packed = bytearray(_frame(_good_header(2), b"\x01" * 20))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(packed) - 1))
        packed[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(packed)))
    try:
        d = D.unpack_delta(bytes(packed[:cut]))
    except D.DeltaError:
        return
    assert isinstance(d.removed, list) and isinstance(d.updated, dict) and isinstance(d.thresholds, dict)
    assert all(0 <= i < len(d.added["id"]) for i in d.added_items)


# ------------------------------------------------------------------------------------------- query equivalence


@pytest.fixture(scope="module")
def large():
    """A 2,600-template base (PCA shortlist stage), a new version with +60/−60 subjects, 10 relabelled and 5 with new
    templates; the device's delta-applied payload and the operator's full payload (`edge watchlist seal`)."""
    rng = np.random.default_rng(7)
    dim = 64
    n_subjects = 1300
    t = {f"s{i}": _unit(rng, 2, dim) for i in range(n_subjects)}
    base = build([(_subject(s), v) for s, v in t.items()], {"match": 0.8, "margin": 0.02}, n_trees=4, dim=dim)
    assert len(base.meta["items"]) >= 2500 and base.meta["stage1"]["kind"] == "pca"
    gone = {f"s{i}" for i in range(0, 600, 10)}  # 60 removed
    relabel = {f"s{i}" for i in range(1, 100, 10)}  # 10 relabelled
    retemplate = {f"s{i}" for i in range(2, 50, 10)}  # 5 with new templates
    added = {f"n{i}": _unit(rng, 1 + i % 3, dim) for i in range(60)}  # 60 added
    new_entries = []
    for s, v in t.items():
        if s in gone:
            continue
        new_entries.append((_subject(s, label="Relabelled " + s if s in relabel else None),
                            _unit(rng, 2, dim) if s in retemplate else v))
    new_entries += [(_subject(s), v) for s, v in added.items()]
    new = build(new_entries, {"match": 0.8, "margin": 0.02}, n_trees=4, dim=dim)
    delta = diff(base, new)
    device = D.apply_bytes(pack(base), D.pack_delta(delta))  # what the store runs
    operator = pack(D.apply(base, diff(base, new)))  # what `edge watchlist seal --base` seals as the full bundle
    return dict(rng=rng, base=base, new=new, delta=delta, device=device, operator=operator, gone=gone,
                relabel=relabel, retemplate=retemplate, added=added, dim=dim)


def test_large_delta_has_the_expected_shape(large):
    d = large["delta"]
    assert len(d.removed) == 60 + 5 and d.n_added == 60 + 5 and set(d.updated) == large["relabel"]
    assert len(D.pack_delta(d)) < len(large["operator"]) // 10  # the point of a delta


def test_device_rebuild_equals_the_operator_full_payload(large):
    device, operator = large["device"], large["operator"]
    assert device == operator
    assert content_sha256(device) == content_sha256(operator)
    full = unpack(device)
    assert full.meta["stage1"] == large["base"].meta["stage1"]  # the base's projection is kept
    assert by_subject(full) == by_subject(large["new"])


def test_make_payload_index_equals_the_rebuild_from_its_content(large):
    """The operator's build (make_payload) and a device rebuilding the index from the same content after the JSON
    round trip (index_for) give the same Annoy bytes, with and without the PCA stage."""
    new = large["new"]
    assert len(new.meta["items"]) >= PCA_MIN_ITEMS and "stage1" in new.meta
    parsed = unpack(pack(new))
    assert index_for(parsed.meta, parsed.templates) == new.index
    small = build([(_subject("a"), _unit(large["rng"], 3))])
    assert "stage1" not in small.meta and index_for(unpack(pack(small)).meta, small.templates) == small.index


def test_delta_applied_and_full_watchlists_answer_every_query_identically(large):
    rng, dim = large["rng"], large["dim"]
    delta_wl = Watchlist.from_payload(large["device"])
    full_wl = Watchlist.from_payload(bytes(large["operator"]))
    new = large["new"]
    q, s = split_templates(new.templates, len(new.meta["items"]), template_dim(new.meta))
    rows = q.astype(np.float32) * s[:, None]
    base = large["base"]
    bq, bs = split_templates(base.templates, len(base.meta["items"]), template_dim(base.meta))
    gone_rows = [r for r, j in enumerate(base.meta["items"]) if base.meta["subjects"]["id"][j] in large["gone"]]
    probes = [rows[i] + rng.normal(scale=0.03, size=dim) for i in rng.choice(len(rows), 200, replace=False)]
    probes += [bq[r].astype(np.float32) * bs[r] for r in gone_rows[:50]]  # removed subjects' templates
    probes += list(_unit(rng, 50, dim))  # strangers
    probes = [p / np.linalg.norm(p) for p in probes]
    matched = 0
    for p in probes:
        a, b = delta_wl.search(p, k=5), full_wl.search(p, k=5)
        assert a == b
        ma, mb = delta_wl.match(p), full_wl.match(p)
        assert ma == mb  # candidates, decision, threshold, margin
        assert not {c.subject_id for c in a} & large["gone"]
        matched += ma.matched
    assert 150 <= matched <= 250  # the noisy templates match, the strangers and removed subjects mostly do not
    for sid, vs in list(large["added"].items())[:10]:  # an added subject is found by its own template
        assert delta_wl.match(vs[0]).top.subject_id == sid
    for sid in sorted(large["relabel"])[:3]:
        j = new.meta["subjects"]["id"].index(sid)
        row = new.meta["items"].index(j)
        assert delta_wl.match(rows[row] / np.linalg.norm(rows[row])).top.label == "Relabelled " + sid


def test_a_delta_removing_everyone_gives_an_empty_loadable_watchlist(large):
    base = large["base"]
    d = D.Delta(content_sha256(pack(base)), list(base.meta["subjects"]["id"]), {}, {f: [] for f in SUBJECT_FIELDS},
                [], b"", {"match": 0.8})
    empty = D.apply_bytes(pack(base), D.pack_delta(d))
    assert unpack(empty).meta["items"] == [] and "stage1" not in unpack(empty).meta  # nothing left to project
    wl = Watchlist.from_payload(empty)
    assert len(wl) == 0 and wl.search(_unit(large["rng"], 1, large["dim"])[0]) == []


def test_a_delta_removing_everyone_from_a_small_list_loads_empty(pair):
    """The control for the case above: without the PCA stage the empty result loads and matches nothing."""
    base, _ = pair
    d = D.Delta(content_sha256(pack(base)), list(base.meta["subjects"]["id"]), {}, {f: [] for f in SUBJECT_FIELDS},
                [], b"", {})
    wl = Watchlist.from_payload(D.apply_bytes(pack(base), D.pack_delta(d)))
    assert len(wl) == 0 and wl.n_subjects == 0 and not wl.match(_unit(np.random.default_rng(0), 1)[0]).matched
