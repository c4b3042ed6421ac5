"""Child process for tests/test_kill_trials.py; the parent SIGKILLs it at a random moment.

    kill_child.py install STATE_DIR KEYS_DIR BUNDLE   start a WatchlistStore, print READY, install BUNDLE, print DONE
    kill_child.py events OUTBOX                        print READY, then add events forever, printing each seq

A line is printed (and flushed) only after the operation it reports has returned.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EMBEDDER = ("kill-trial-embedder", "0" * 64)


def install(state: Path, keys_dir: Path, bundle: Path) -> None:
    from edge import keys
    from edge.watchlist.device.store import WatchlistStore

    store = WatchlistStore(state, "cam-k", keys.load_private_key(keys_dir / "device.key", "device"),
                           keys.TrustStore.load(keys_dir / "operators.json"), EMBEDDER[0], EMBEDDER[1],
                           lambda opened: opened.payload)
    store.start()
    data = bundle.read_bytes()
    print("READY", store.state().version, flush=True)
    result = store.install(data)
    print("DONE", result.reason, result.version, flush=True)


def events(path: Path) -> None:
    from edge.messaging.outbox import Outbox
    from edge.messaging.payloads import make_event

    outbox = Outbox(path)
    print("READY", flush=True)
    n = 0
    while True:
        n += 1
        seq = outbox.add(make_event(device_id="cam-k", captured_at=1_764_000_000.0 + n, subject_id=f"S-{n}",
                                    watchlist_id="wl", watchlist_version=1, embedder_id=EMBEDDER[0],
                                    similarity=0.7, threshold=0.6, margin=0.1, track_id=n, chips_used=2,
                                    quality={"sharpness": 80.0}))
        print(seq, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "install":
        install(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        events(Path(sys.argv[2]))
