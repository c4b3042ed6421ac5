"""The appliance loop's plumbing and `edge bench`'s output contract."""

import json
import threading
import time

from edge.cli import main
from edge.pipeline import LatestSlot


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


def test_bench_json_contract(capsys):
    assert main(["bench", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"fps", "frames", "faces", "stage_ms", "rss_mb"} <= report.keys()
    assert {"detect", "embed", "match"} <= report["stage_ms"].keys()
    assert all({"p50", "p99"} <= report["stage_ms"][s].keys() for s in ("detect", "embed", "match"))
    assert report["frames"] == report["frames_captured"] > 200 and report["frames_dropped"] == 0
    assert report["events"] >= 1 and report["fps"] > 0
