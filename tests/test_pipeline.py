"""The appliance loop's plumbing and `edge bench`'s output contract."""

import json
import threading
import time

import pytest

from edge.cli import main
from edge.device.pipeline import LatestSlot


def test_latest_slot_keeps_the_freshest_and_counts_drops():
    slot = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get(0.1) == 4 and slot.dropped == 4
    assert slot.get(0.05) is None


def test_lossless_slot_waits_instead_of_dropping():
    slot = LatestSlot(lossless=True)
    got = []

    def consume():
        for _ in range(5):
            got.append(slot.get(1.0))

    t = threading.Thread(target=consume)
    t.start()
    for i in range(5):
        slot.put(i)
    t.join(5)
    assert got == [0, 1, 2, 3, 4] and slot.dropped == 0


def test_closed_slot_unblocks_a_waiting_reader():
    slot = LatestSlot()
    t0 = time.monotonic()
    threading.Timer(0.1, slot.close).start()
    assert slot.get(5.0) is None and time.monotonic() - t0 < 1.0


@pytest.mark.slow
@pytest.mark.models  # `edge bench` runs the real pipeline
def test_bench_json_contract(capsys):
    assert main(["bench", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"fps", "frames", "faces", "stage_ms", "rss_mb"} <= report.keys()
    assert {"detect", "embed", "match"} <= report["stage_ms"].keys()
    assert all({"p50", "p99"} <= report["stage_ms"][s].keys() for s in ("detect", "embed", "match"))
    assert report["frames"] == report["frames_captured"] > 200 and report["frames_dropped"] == 0
    assert report["events"] >= 1 and report["fps"] > 0


def test_process_embeds_a_still_face_again_cuts_chips_only_for_embeddings_and_decides(analyzer):
    """Pipeline.process with a fake detector and watchlist on a real photo: the cheap keypoint chip gates every
    frame, the (costly) analyzer embedding runs only when the track embeds, a face that holds still is re-embedded
    after reembed_after_s, and its second agreeing chip fires the k=2 decision."""
    import numpy as np

    from conftest import FACES
    from edge.imageio import read_image
    from edge.device.pipeline import MatchContext, Pipeline
    from edge.device.policy import DecisionPolicy, PolicyConfig
    from edge.device.track import Tracker
    from edge.types import Frame
    from edge.types import Candidate, MatchResult

    rgb = read_image(FACES / "obama.jpg")
    det = analyzer.detect(rgb)[0]

    class Detector:
        def detect(self, image):
            return [det]

    class FakeWatchlist:
        def __init__(self):
            self.queries = []

        def match(self, embedding, embedding2=None):
            self.queries.append((np.asarray(embedding), embedding2))
            top = Candidate("obama", "Barack Obama", "test", 0.97, 0)
            return MatchResult([top], True, 0.95, 0.02, 1.0, top)

    cuts = []

    def embed_face(image, d):
        cuts.append(d)
        return analyzer.embed(image, d)

    wl = FakeWatchlist()
    pipe = Pipeline(None, Detector(), analyzer.embedder, Tracker(reembed_after_s=0.5),
                    DecisionPolicy(PolicyConfig(k=2, n=3)), MatchContext(lambda: wl), lambda *a: None,
                    embed_face=embed_face)
    decisions = []
    for i in range(12):  # 1.1 s of a face that does not move, at 10 fps
        decisions += pipe.process(Frame(rgb, i, 0.0, i * 0.1))
    counters = pipe.health.snapshot()["counters"]
    assert counters["embeddings"] == len(cuts) == 3  # t = 0, 0.5, 1.0 s
    assert len(decisions) == 1 and decisions[0].subject_id == "obama" and decisions[0].chips_used == 2
    # What was matched is the analyzer's face (dlib's chip, and the fused second embedding), not the gate's chip.
    face = analyzer.embed(rgb, det)
    assert np.allclose(wl.queries[0][0], face.embedding, atol=1e-6)
    assert (wl.queries[0][1] is None) == (face.embedding2 is None)
    if face.embedding2 is not None:
        assert np.allclose(wl.queries[0][1], face.embedding2, atol=1e-6)
