"""A minimal device for the delivery fault test: creates `--total` match events at `--rate` per second into its
durable outbox and publishes them until the consumer has acknowledged all of them. Killed and restarted by the
test; on restart it continues from the outbox (never re-using a seq). Prints DRAINED and exits 0 when done."""

import argparse
import json
import queue
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.messaging.delivery import EventPublisher  # noqa: E402
from edge.messaging.mqtt import MqttClient, MqttSettings  # noqa: E402
from edge.messaging.outbox import Outbox  # noqa: E402
from edge.messaging.topics import Topics
from edge.messaging.payloads import make_event  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outbox", type=Path, required=True)
    ap.add_argument("--total", type=int, required=True)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--settings", required=True, help="MqttSettings as JSON")
    args = ap.parse_args()
    fields = json.loads(args.settings)
    for key in ("ca_file", "cert_file", "key_file"):
        fields[key] = Path(fields[key]) if fields.get(key) else None
    settings = MqttSettings(**fields)
    topics = Topics(settings.client_id)
    outbox = Outbox(args.outbox)
    client = MqttClient(settings, [(topics.events_ack, 1)])
    publisher = EventPublisher(outbox, client, topics, resend_after=3.0, batch=100)
    client.start()
    start, created = time.monotonic(), outbox.stats()["last_seq"]
    while True:
        due = min(args.total, created + int((time.monotonic() - start) * args.rate) + 1)
        while outbox.stats()["last_seq"] < due:
            outbox.add(make_event(device_id=settings.client_id, captured_at=time.time(), subject_id="s1",
                                  watchlist_id="wl", watchlist_version=1, embedder_id="dlib_resnet_v1",
                                  similarity=0.97, threshold=0.95, margin=0.1, track_id=1, chips_used=3,
                                  quality={"eye_distance_px": 40.0}))
        publisher.pump()
        while True:
            try:
                msg = client.inbox.get_nowait()
            except queue.Empty:
                break
            if msg.topic == topics.events_ack:
                publisher.on_ack(msg.payload)
        if outbox.stats()["last_seq"] >= args.total and outbox.depth() == 0:
            print("DRAINED", flush=True)
            client.stop()
            return
        time.sleep(0.01)


if __name__ == "__main__":
    main()
