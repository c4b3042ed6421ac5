"""`Pipeline.process` and `WatchlistSync` against fakes: no models, no broker, no clock — each rule of the loop and of
the chunk protocol checked by itself, in milliseconds."""

import hashlib

import numpy as np

from edge.device.health import Health
from edge.device.pipeline import MatchContext, Pipeline
from edge.device.policy import DecisionPolicy, PolicyConfig
from edge.device.track import Tracker
from edge.messaging.payloads import decode_watchlist_state, encode_offer
from edge.messaging.offers import offer_messages
from edge.messaging.sync import WatchlistSync
from edge.messaging.topics import Topics
from edge.types import Candidate, Detection, Frame, MatchResult, PendingEvent
from edge.vision.quality import QualityThresholds
from fakes import FakeStore, FakeTransport

# ---------------------------------------------------------------------------------------------------- pipeline

RNG = np.random.default_rng(7)
TEXTURE = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # sharp everywhere: the blur gate passes
QUALITY = QualityThresholds()  # the pipeline's default gate


def _face(x: float, eye: float = 60.0, score: float = 0.9) -> Detection:
    """A frontal face whose eyes are `eye` pixels apart, centred at (x, 240)."""
    kp = np.array([[x - eye / 2, 220], [x + eye / 2, 220], [x, 250], [x, 280], [x - eye, 230], [x + eye, 230]],
                  np.float32)
    return Detection((x - eye * 1.2, 170.0, x + eye * 1.2, 320.0), score, kp)


class FakeDetector:
    def __init__(self, per_frame):
        self.per_frame = per_frame  # frame index → detections

    def detect(self, rgb):
        return self.per_frame(self.index)


class FakeEmbedder:
    chip_size = 150

    def __init__(self):
        self.calls = 0

    def embed(self, chip):
        self.calls += 1
        v = np.ones(8, np.float32)
        return v / np.linalg.norm(v)


class FakeWatchlist:
    """Always proposes one subject at `similarity`; counts the searches."""

    manifest = {"watchlist_id": "wl", "version": 3}

    def __init__(self, similarity):
        self.similarity, self.searches = similarity, 0

    def match(self, embedding, embedding2=None):
        self.searches += 1
        top = Candidate("s-1", "Listed Person", "wanted", self.similarity, 0)
        return MatchResult([top], self.similarity >= 0.6, 0.6, 0.05, 1.0, top)


def _pipeline(detections, watchlist, budget=5, quality=QUALITY, k=2):
    detector, embedder = FakeDetector(detections), FakeEmbedder()
    sink = []
    pipe = Pipeline(source=None, detector=detector, embedder=embedder,
                    tracker=Tracker(embed_budget=budget, embed_improvement=1.0, reembed_after_s=0.0),
                    policy=DecisionPolicy(PolicyConfig(k=k, n=3, cooldown_s=60)),
                    matches=MatchContext(lambda: watchlist), sink=lambda *a: sink.append(a), health=Health(),
                    quality=quality)
    return pipe, detector, embedder


def _run(pipe, detector, frames):
    decisions = []
    for i in range(frames):
        detector.index = i
        decisions += pipe.process(Frame(TEXTURE, i, 1e9 + i / 10, 100.0 + i / 10))
    return decisions


def test_process_decides_once_k_chips_agree_and_queues_a_pending_event():
    wl = FakeWatchlist(0.9)
    pipe, det, emb = _pipeline(lambda i: [_face(320)], wl)
    decisions = _run(pipe, det, 4)
    assert len(decisions) == 1 and decisions[0].subject_id == "s-1" and decisions[0].chips_used == 2
    item = pipe.events.get_nowait()
    assert isinstance(item, PendingEvent) and item.decision is decisions[0] and item.watchlist is wl
    # both voting chips, best first
    assert [c.shape for c in item.chips] == [(150, 150, 3)] * 2 and item.frame.index == 1
    assert pipe.events.empty()  # one (track, subject) pair fires once


def test_process_counts_gate_refusals_and_never_embeds_them():
    wl = FakeWatchlist(0.9)
    faces = lambda i: [_face(150, eye=10.0), _face(450, score=0.3)]  # noqa: E731 - too small, and a weak detection
    pipe, det, emb = _pipeline(faces, wl)
    assert _run(pipe, det, 3) == []
    counters = pipe.health.snapshot()["counters"]
    assert counters["quality_reject.face too small"] == 3 and counters["quality_reject.low detection score"] == 3
    assert emb.calls == 0 and wl.searches == 0


def test_process_respects_the_embedding_budget_and_matches_nothing_without_a_watchlist():
    pipe, det, emb = _pipeline(lambda i: [_face(320)], None, budget=2)
    assert _run(pipe, det, 6) == []
    assert emb.calls == 2 and pipe.health.snapshot()["counters"]["embeddings"] == 2


def test_process_below_threshold_embeds_but_never_decides():
    wl = FakeWatchlist(0.3)
    pipe, det, emb = _pipeline(lambda i: [_face(320)], wl)
    assert _run(pipe, det, 5) == [] and emb.calls == 5 and wl.searches >= 5 and pipe.events.empty()
    assert pipe.policy.below_threshold >= 5


# -------------------------------------------------------------------------------------------------------- sync

DEVICE = "cam-f"


def _sync(tmp_path, store=None, window=2):
    clock = [0.0]
    results = []
    sync = WatchlistSync(store or FakeStore(), FakeTransport(), DEVICE, tmp_path / "incoming", window=window,
                         stall_after=10.0, on_result=lambda r, data: results.append((r.reason, data)),
                         clock=lambda: clock[0])
    return sync, clock, results


def test_a_download_that_cannot_be_assembled_is_reported_and_set_aside(tmp_path):
    """A chunk file gone (or the disk full) when the last chunk arrives: reported as sync_failed, the folder
    removed, the offer set aside (not failed: it is fetched again later), nothing installed."""
    bundle = bytes(range(256)) * 40
    messages = offer_messages(bundle, DEVICE, 2, chunk_bytes=2048)
    chunks, (offer_topic, offer) = messages[:-1], messages[-1]
    sync, _, results = _sync(tmp_path, window=8)
    sync.handle(offer_topic, offer)
    for topic, payload in chunks[:-1]:
        sync.handle(topic, payload)
    (next((tmp_path / "incoming").iterdir()) / "0").unlink()
    sync.handle(*chunks[-1])
    state = decode_watchlist_state(sync.transport.published[-1][1])
    assert (state.state, state.reason) == ("rejected", "sync_failed") and "could not be assembled" in state.message
    assert sync.store.installed == [] and results == [] and list((tmp_path / "incoming").iterdir()) == []
    assert len(sync.set_aside) == 1 and not sync.failed


def test_sync_fetches_a_window_at_a_time_installs_and_reports(tmp_path):
    bundle = bytes(range(256)) * 40  # 10,240 bytes → 5 chunks of 2,048
    messages = offer_messages(bundle, DEVICE, 2, chunk_bytes=2048)
    chunks, (offer_topic, offer) = messages[:-1], messages[-1]
    sync, _, results = _sync(tmp_path)
    sync.handle(offer_topic, offer)
    t = Topics(DEVICE)
    assert sync.transport.subscribed == [t.watchlist_chunk(2, 0), t.watchlist_chunk(2, 1)]  # the window
    for topic, payload in chunks:
        sync.handle(topic, payload)
    assert sync.store.installed == [bundle] and results == [("installed", hashlib.sha256(bundle).hexdigest())]
    assert sync.transport.subscribed == []  # every chunk topic given back
    topic, body, retain = sync.transport.published[-1]
    state = decode_watchlist_state(body)
    assert topic == t.watchlist_state and retain and (state.state, state.installed_version) == ("installed", 2)
    assert sync.stats.chunks_received == 5 and sync.stats.installs == 1


def test_sync_rerequests_a_bad_chunk_and_a_stalled_window_on_its_clock(tmp_path):
    bundle = b"x" * 5000
    messages = offer_messages(bundle, DEVICE, 2, chunk_bytes=2048)
    sync, clock, _ = _sync(tmp_path)
    sync.handle(*messages[-1])
    t = Topics(DEVICE)
    sync.handle(t.watchlist_chunk(2, 0), b"forged")
    assert sync.stats.chunks_rejected == 1 and t.watchlist_chunk(2, 0) in sync.transport.subscribed
    before = list(sync.transport.subscribed)
    clock[0] = 5.0
    sync.tick()
    assert sync.transport.subscribed == before  # not stalled yet
    clock[0] = 11.0
    sync.tick()
    assert sorted(sync.transport.subscribed) == sorted(before)  # re-subscribed: the broker re-sends retained copies
    for topic, payload in messages[:-1]:
        sync.handle(topic, payload)
    assert sync.store.installed == [bundle]


def test_sync_reports_a_rejection_and_ignores_what_is_not_its_own(tmp_path):
    bundle = b"y" * 100
    sync, _, results = _sync(tmp_path, FakeStore(accept=False))
    sha = hashlib.sha256(bundle).hexdigest()
    other = encode_offer("cam-other", 2, sha, 100, 100, [sha])
    sync.handle(Topics(DEVICE).watchlist_manifest, other)  # an offer for someone else, on our topic
    sync.handle("edge/cam-other/watchlist/chunk/2/0", bundle)  # another device's topic
    sync.handle("elsewhere/topic", b"{}")
    assert sync.stats.malformed == 3 and sync.transport.subscribed == [] and results == []
    for topic, payload in offer_messages(bundle, DEVICE, 2, chunk_bytes=100)[::-1]:  # offer first, then the chunk
        sync.handle(topic, payload)
    state = decode_watchlist_state(sync.transport.published[-1][1])
    assert (state.state, state.reason) == ("rejected", "bad_signature") and results == [("bad_signature", sha)]
