"""Payload format, memfd-loaded Annoy index, matcher decisions and open-set metrics."""

import os

import numpy as np
import pytest

from edge.evaluation.openset import openset_report, threshold_at_fpir
from edge.watchlist.operator.build import make_payload
from edge.watchlist.device.matcher import Watchlist
from edge.watchlist.payload import Payload, PayloadError, pack, unpack


def _unit(rng, n, dim=32):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def gallery():
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 200)
    subjects = [{"id": f"s{i}", "label": f"Subject {i}", "category": "test", "expires": None} for i in range(100)]
    items = [i // 2 for i in range(200)]  # two templates per subject
    return vectors, items, subjects


def test_payload_round_trip_and_malformed_input(gallery):
    vectors, items, subjects = gallery
    payload = make_payload(vectors, items, subjects, n_trees=4, thresholds={"match": 0.5})
    data = pack(payload)
    back = unpack(data)
    assert back.index == payload.index and back.meta == payload.meta and back.templates == payload.templates
    assert len(payload.templates) == 200 * (vectors.shape[1] + 4)
    with pytest.raises(PayloadError, match="templates hold"):
        unpack(pack(Payload(payload.index, payload.meta, payload.templates[:-4])))
    with pytest.raises(PayloadError, match="bad magic"):
        unpack(b"nonsense" + data[8:])
    with pytest.raises(PayloadError, match="truncated"):
        unpack(data[:-5])
    with pytest.raises(PayloadError, match="lacks 'items'"):
        unpack(pack(Payload(b"", {"dim": 3, "metric": "angular", "subjects": []})))
    with pytest.raises(PayloadError, match="subjects must be equal-length columns id, label, category, expires"):
        unpack(pack(Payload(b"", {"dim": 3, "metric": "angular", "items": [], "subjects": [{"id": "x"}]})))


def test_index_loads_from_memory_and_finds_each_template(gallery):
    vectors, items, subjects = gallery
    wl = Watchlist.from_payload(pack(make_payload(vectors, items, subjects, n_trees=8)), {"match": 0.9, "margin": 0.05})
    assert len(wl) == 200
    # The index lives in anonymous memory: every descriptor that names it is a memfd, none is a file on disk.
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}")]
    named = [link for link in links if "edge-watchlist" in link]
    assert named and all(link.startswith("/memfd:edge-watchlist") for link in named)
    for i in (0, 57, 199):
        top = wl.search(vectors[i], k=3)
        # The exact stage re-scores with int8 templates: cosine within ~1e-3 of the float value.
        assert top[0].subject_id == f"s{items[i]}" and top[0].similarity == pytest.approx(1.0, abs=3e-3)
        assert len({c.subject_id for c in top}) == len(top)  # one candidate per subject


def test_match_needs_threshold_and_margin(gallery):
    vectors, items, subjects = gallery
    wl = Watchlist.from_payload(make_payload(vectors, items, subjects, n_trees=8), {"match": 0.9, "margin": 0.05})
    hit = wl.match(vectors[10])
    assert hit.matched and hit.top.subject_id == "s5" and hit.margin > 0.05
    rng = np.random.default_rng(5)
    stranger = _unit(rng, 1)[0]
    miss = wl.match(stranger)
    assert not miss.matched and miss.top.similarity < 0.9
    # Halfway between two subjects: similar to both, so the margin rule refuses even at a low threshold.
    between = vectors[0] + vectors[2]
    between /= np.linalg.norm(between)
    tie = wl.match(between, threshold=0.5, margin=0.05)
    assert tie.top.similarity >= 0.5 and tie.margin < 0.05 and not tie.matched
    assert set(tie.to_json()) >= {"matched", "threshold", "margin", "candidates"}


def test_threshold_at_fpir_and_report():
    nonmated = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    t = threshold_at_fpir(nonmated, 0.2)  # one of five may alarm
    assert 0.4 < t <= 0.4 + 1e-9
    report = openset_report(np.array([0.95, 0.5, 0.85]), np.array([True, True, False]), nonmated, 0.2)
    assert report["fpir"] == pytest.approx(0.2) and report["fnir"] == pytest.approx(1 / 3, abs=1e-4)
    assert report["rank1"] == pytest.approx(2 / 3, abs=1e-4)


def test_large_lists_shortlist_on_a_pca_projection_and_rescore_exactly():
    """From PCA_MIN_ITEMS templates on, Annoy indexes a 64-D projection; the int8 templates give the exact cosine,
    so the best template is found and scored as an exact search would (within int8 rounding)."""
    from edge.watchlist.operator.build import PCA_MIN_ITEMS, STAGE1_DIM

    rng = np.random.default_rng(3)
    n, dim = PCA_MIN_ITEMS + 500, 128
    base = _unit(rng, 40, dim)  # clustered, like face embeddings: most variance in few directions
    vectors = base[rng.integers(0, 40, n)] + 0.35 * _unit(rng, n, dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    subjects = [{"id": f"s{i}", "label": "", "category": "", "expires": None} for i in range(n)]
    payload = make_payload(vectors, list(range(n)), subjects, n_trees=8)
    assert payload.meta["stage1"]["dim"] == STAGE1_DIM
    wl = Watchlist.from_payload(pack(payload), {"match": 0.9, "margin": 0.0}, search_k=4000)
    probes = vectors[:200] + 0.05 * _unit(rng, 200, dim)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    exact = probes @ vectors.T
    hits = 0
    for p, row in zip(probes, exact, strict=True):
        top = wl.search(p, k=1)[0]
        hits += top.subject_id == f"s{int(row.argmax())}"
        assert top.similarity == pytest.approx(float(row[int(top.subject_id[1:])]), abs=3e-3)
    assert hits >= 198


def test_a_malformed_shortlist_projection_is_a_load_error_not_a_traceback():
    from edge.watchlist.index import IndexLoadError

    rng = np.random.default_rng(5)
    n = 2100
    vectors = _unit(rng, n, 128)
    subjects = [{"id": f"s{i}", "label": "", "category": "", "expires": None} for i in range(n)]
    payload = make_payload(vectors, list(range(n)), subjects, n_trees=2)
    broken = dict(payload.meta, stage1=dict(payload.meta["stage1"], components=[[0.0] * 7]))
    with pytest.raises(IndexLoadError, match="shortlist projection is malformed"):
        Watchlist.from_payload(Payload(payload.index, broken, payload.templates))
    with pytest.raises(IndexLoadError, match="no templates to re-score with"):
        Watchlist.from_payload(Payload(payload.index, payload.meta, b""))


def test_a_fused_watchlist_scores_the_shortlist_with_both_embeddings():
    """Rows [e1, e2] re-scored with [scale1·q1, scale2·q2] + offset give the fused score an exact search gives; a
    probe without its second embedding is refused with a clear message, and no score exceeds 1."""
    from edge.errors import EdgeError

    rng = np.random.default_rng(11)
    n = 300
    v1, v2 = _unit(rng, n, 128), _unit(rng, n, 64)
    subjects = [{"id": f"s{i}", "label": "", "category": "", "expires": None} for i in range(n)]
    fusion = {"secondary": "test", "dim2": 64, "scale1": 0.84, "scale2": 0.036, "offset": 0.124}
    payload = make_payload(v1, list(range(n)), subjects, n_trees=8, vectors2=v2, fusion=fusion)
    assert len(payload.templates) == n * (128 + 64 + 4)
    wl = Watchlist.from_payload(pack(payload), {"match": 0.9, "margin": 0.0})
    for i in (0, 123, 299):
        q1 = v1[i] + 0.1 * _unit(rng, 1, 128)[0]
        q1 /= np.linalg.norm(q1)
        exact = 0.84 * (v1 @ q1) + 0.036 * (v2 @ v2[i]) + 0.124
        top = wl.search(q1, k=1, embedding2=v2[i])[0]
        assert top.subject_id == f"s{int(exact.argmax())}"
        assert top.similarity == pytest.approx(float(exact.max()), abs=3e-3)
    assert wl.search(v1[5], k=1, embedding2=v2[5])[0].similarity <= 1.0
    with pytest.raises(EdgeError, match="no second embedding"):
        wl.search(v1[0], k=1)
    with pytest.raises(PayloadError, match="templates hold"):  # rows sized for the primary alone
        unpack(pack(Payload(payload.index, payload.meta, payload.templates[:n * 132])))


def test_building_an_index_writes_nothing_to_disk(tmp_path, monkeypatch):
    """A device applying a delta rebuilds the index: Annoy saves it into an anonymous memory file, never the temp
    dir, and the bytes are the ones a file save gives (the operator's and the device's builds must agree)."""
    import tempfile

    from annoy import AnnoyIndex

    from edge.watchlist.index import build_index

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 32)).astype(np.float32)
    def no_temp_files(*args, **kwargs):
        raise AssertionError("the index was saved through a temporary file")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_temp_files)
    monkeypatch.setattr(tempfile, "mkstemp", no_temp_files)
    built = build_index(vectors, n_trees=4, seed=1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    ann = AnnoyIndex(32, "angular")
    ann.set_seed(1)
    for i, v in enumerate(vectors):
        ann.add_item(i, v)
    ann.build(4, n_jobs=1)
    ann.save(str(tmp_path / "file.ann"))
    ann.unload()
    assert built == (tmp_path / "file.ann").read_bytes()
