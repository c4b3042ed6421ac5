"""`edge bench`: end-to-end and per-stage speed of the real pipeline over a video.

Unthrottled (`pace="fast"`): capture decodes as fast as inference consumes (lossless slot), so `fps` is every frame
of the file processed per second — decode included. `pace="realtime"` plays the file at its own rate, with the
appliance's drop-the-stale-frame slot, for CPU use and latency at camera speed.
`pace="realtime"` plays the file at its own rate, for CPU use at camera speed. A watchlist of `watchlist_size`
subjects (the demo's real enrollments padded with random unit vectors) exercises the match stage and the RSS.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _seal_synthetic(analyzer: Any, photos: Path, size: int, tmp: Path) -> tuple[Path, Path, Path]:
    """A sealed bundle of `size` subjects (the demo's real enrollments padded with random unit vectors) and its
    throwaway keys, built and sealed in a child process so that this one's peak RSS is the device-way load's."""
    import json
    import subprocess
    import sys

    from edge.evaluation.clip import DEMO_GALLERY
    from edge.watchlist.operator.build import GalleryEntry, enroll

    enrollment = enroll([GalleryEntry(photos / n, n, label, "demo", None) for n, label in DEMO_GALLERY.items()],
                        analyzer)
    arrays: dict[str, Any] = {"vectors": np.stack(enrollment.vectors), "items": np.array(enrollment.item_subject)}
    if analyzer.fusion is not None:
        arrays["vectors2"] = np.stack(enrollment.vectors2)
    np.savez(tmp / "enrolled.npz", **arrays)
    (tmp / "enrolled.json").write_text(json.dumps({"subjects": enrollment.subjects, "size": size,
                                                   "fusion": analyzer.fusion_meta,
                                                   "thresholds": bench_thresholds(analyzer, size)}))
    proc = subprocess.run([sys.executable, "-m", "edge.evaluation.pipeline_bench", str(tmp)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sealing the synthetic watchlist failed: {proc.stderr[-2000:]}")
    return tmp / "bench.bundle", tmp / "device.key", tmp / "operator.pub"


def _seal_child(tmp: Path) -> None:
    """The child of `_seal_synthetic`: pad, build, seal, write the bundle and its keys into `tmp`."""
    import json
    from datetime import datetime, timedelta, timezone

    from edge import keys
    from edge.watchlist.operator.build import make_payload
    from edge.watchlist.operator.seal import seal
    from edge.watchlist.payload import pack

    spec = json.loads((tmp / "enrolled.json").read_text())
    with np.load(tmp / "enrolled.npz") as z:
        vectors, items = z["vectors"], list(map(int, z["items"]))
        vectors2 = z["vectors2"] if "vectors2" in z else None
    subjects, size = list(spec["subjects"]), int(spec["size"])
    extra = max(0, size - len(subjects))
    rng = np.random.default_rng(0)

    def pad(dim: int) -> np.ndarray:
        v = rng.normal(size=(extra, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    if extra:
        vectors = np.concatenate([vectors, pad(vectors.shape[1])])
        if vectors2 is not None:
            vectors2 = np.concatenate([vectors2, pad(vectors2.shape[1])])
        items += list(range(len(subjects), len(subjects) + extra))
        subjects += [{"id": f"synthetic-{i}", "label": "", "category": "", "expires": None} for i in range(extra)]
    payload = pack(make_payload(vectors, items, subjects, vectors2=vectors2, fusion=spec["fusion"]))
    operator, device = keys.generate_operator_key(), keys.generate_device_key()
    data = seal(payload, watchlist_id="bench", version=1, device_id="bench-device", device_public=device.public_key(),
                signing_key=operator, embedder_id="bench", embedder_sha256="0" * 64, dim=int(vectors.shape[1]),
                n_items=len(items), n_subjects=len(subjects), thresholds=spec["thresholds"],
                expires=datetime.now(timezone.utc) + timedelta(days=1))
    (tmp / "bench.bundle").write_bytes(data)
    keys.save_private_key(tmp / "device.key", device)
    keys.save_public_key(tmp / "operator.pub", operator.public_key())


def bench_thresholds(analyzer: Any, size: int, fpir: float = 0.003) -> dict:
    """The thresholds `edge watchlist seal` would give a list of `size` templates of this embedder at `fpir` (the
    shipped tail's bound); where the bound is out of reach, its point estimate (the bench measures speed and memory,
    it must still decide something)."""
    from edge.evaluation.calibration import scoring_tail

    point, bound, _ = scoring_tail(analyzer.embedder_info.info, analyzer.fusion).thresholds(size, fpir)
    return {"match": round(bound if bound <= 1.0 else point, 5), "margin": 0.02}


def _watchlist_from_bundle(bundle: Path, device_key: Path, operator_key: Path):
    """Verify, decrypt (into a memfd) and load a sealed bundle, exactly as a device does."""
    import gc

    from edge import keys
    from edge.device.wiring import watchlist_loader
    from edge.watchlist.device.unseal import open_bundle_file

    operator = keys.load_public_key(operator_key, "operator")
    opened = open_bundle_file(bundle, keys.load_private_key(device_key, "device"), {keys.key_id(operator): operator},
                              allow_expired=True)
    watchlist = watchlist_loader(opened)
    del opened
    gc.collect()
    return watchlist


def run_bench(analyzer: Any, video: Path | None, photos: Path, pace: str = "fast", watchlist_size: int = 2,
              max_seconds: float | None = None, bundle: tuple[Path, Path, Path] | None = None) -> dict:
    """Run the pipeline over `video` (default: the demo clip) and return the `edge bench` report.

    bundle: (sealed bundle, device private key, operator public key) to load the watchlist from, as a device does,
    instead of building one of `watchlist_size` templates in this process.
    """
    from edge.device.capture.opencv import OpenCVSource
    from edge.evaluation.clip import make_clip
    from edge.device.health import Health, rss_mb
    from edge.device.wiring import build_pipeline

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        if video is None:
            video = Path(tmp) / "demo.mp4"
            make_clip(video, photos, analyzer)
        t_wl = time.perf_counter()
        if bundle is None:  # the list is loaded the device way too: sealed (in a child process), verified, memfd
            bundle = _seal_synthetic(analyzer, photos, watchlist_size, Path(tmp))
        watchlist = _watchlist_from_bundle(*bundle)
        wl_seconds = time.perf_counter() - t_wl
        events: list[float] = []
        health = Health()
        pipeline = build_pipeline(OpenCVSource(video, pace=pace), analyzer, lambda: watchlist,
                                  lambda d, f, w, c: events.append(time.monotonic() - f.monotonic), health,
                                  lossless=pace == "fast")
        cpu0, wall0 = os.times(), time.monotonic()
        pipeline.start()
        pipeline.wait(max_seconds)
        pipeline.stop()
        wall = time.monotonic() - wall0
        cpu1 = os.times()
        snap = health.snapshot()
        counters = snap["counters"]
        frames = int(counters.get("frames_processed", 0))
        stage = health.stage_ms()
        return {
            "video": str(video), "pace": pace, "fps": round(frames / wall, 2), "frames": frames,
            "frames_captured": int(counters.get("frames_captured", 0)),
            "frames_dropped": int(snap["gauges"].get("frames_dropped", 0)),
            "faces": int(counters.get("faces", 0)), "embeddings": int(counters.get("embeddings", 0)),
            "events": len(events), "seconds": round(wall, 2),
            "stage_ms": {k: {"p50": v["p50"], "p99": v["p99"]} for k, v in stage.items()
                         if k in ("detect", "embed", "match", "frame", "frame_to_event")},
            "frame_to_event_ms_p99": round(float(np.percentile(np.array(events) * 1000, 99)), 1) if events else None,
            "cpu_percent": round(100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall, 1),
            "rss_mb": round(rss_mb() or 0.0, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_breakdown_mb": _rss_breakdown(),
            "watchlist_size": len(watchlist), "watchlist_load_seconds": round(wl_seconds, 2),
            "backend": analyzer.detector.model.backend,
        }


def _rss_breakdown() -> dict:
    """VmRSS split as the kernel reports it: anonymous (heap, numpy), file (models, libraries), shmem (memfds)."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    out[key[3:].lower()] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return out


if __name__ == "__main__":
    import sys

    _seal_child(Path(sys.argv[1]))
