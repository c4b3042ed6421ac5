"""The appliance loop: capture → latest-frame slot → inference (detect → track → quality → align → embed when the
track needs it → match → per-track policy) → event queue → sink (audit log, then outbox).

Threads, not processes: LiteRT's invoke and OpenCV release the GIL, and each interpreter is owned by the one
inference thread. Capture never blocks: the freshest frame wins and every overwritten frame is counted. The event
queue is bounded; a full queue drops and counts (it cannot fill in practice: one event per track and subject).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edge.device.health import Health
from edge.device.policy import DecisionPolicy
from edge.device.ports import Detector, Embedder, EventSink, Matcher
from edge.device.track import Tracker, quality_score
from edge.types import Decision, Detection, Face, Frame, PendingEvent
from edge.vision.align import CHIP_SIZE, align_face
from edge.vision.quality import QualityThresholds, assess

if TYPE_CHECKING:  # hints only: the pipeline is given its source and governor
    from edge.device.capture.base import FrameSource
    from edge.device.thermal import ThermalGovernor

log = logging.getLogger("edge.device.pipeline")

#: the quality gate when none is given (frozen, so one shared instance is safe)
DEFAULT_QUALITY = QualityThresholds()


class LatestSlot:
    """A one-item mailbox: `put` overwrites (counting the frame it replaced), `get` waits for a new item.

    lossless: `put` waits until the previous item was taken instead (benchmarks of a file: every frame counts).
    """

    def __init__(self, lossless: bool = False) -> None:
        self._item: Any = None
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False
        self.lossless = lossless

    def put(self, item: Any) -> None:
        with self._cond:
            while self.lossless and self._item is not None and not self.closed:
                self._cond.wait(0.1)
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify_all()

    def get(self, timeout: float) -> Any:
        """The newest item, or None after `timeout` seconds or once closed."""
        with self._cond:
            if self._item is None and not self.closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass
class MatchContext:
    """Where matches come from: `watchlist()` returns the live Watchlist (or None: nothing to match against)."""

    watchlist: Callable[[], Matcher | None]


class Pipeline:
    """Runs one frame source through the vision stack and hands decisions to
    `sink(decision, frame, watchlist, chips)` (chips: the track's best embedded faces, aligned, RGB uint8, best
    first — at most two, kept in memory only).

    detector / embedder: from a FaceAnalyzer (owned by the inference thread). tracker / policy: pure state.
    """

    def __init__(self, source: FrameSource, detector: Detector, embedder: Embedder, tracker: Tracker,
                 policy: DecisionPolicy, matches: MatchContext, sink: EventSink, health: Health | None = None,
                 quality: QualityThresholds = DEFAULT_QUALITY, event_queue_size: int = 256,
                 lossless: bool = False, track_templates: bool = True,
                 embed_face: Callable[[np.ndarray, Detection], Face] | None = None,
                 governor: ThermalGovernor | None = None) -> None:
        self.source = source
        #: called with {"frame", "track", "outcome", …} for every gated or matched chip (the demo's explanations),
        #: or None; outcome: "quality" (+ reason) or the policy's (`DecisionPolicy.last_outcome`)
        self.trace: Callable[[dict[str, Any]], None] | None = None
        #: skips detection on some frames while the CPU runs hot; None: every frame is processed
        self.governor = governor
        #: (rgb, detection) → Face, called only for chips that will be embedded (FaceAnalyzer.embed: dlib landmarks,
        #: dlib's chip, the embedding and the fused second one); None = embed the keypoint chip the gate measured
        self.embed_face = embed_face
        self.track_templates = track_templates
        self.detector = detector
        self.embedder = embedder
        self.tracker = tracker
        self.policy = policy
        self.matches = matches
        self.sink = sink
        self.health = health or Health()
        self.quality = quality
        self.slot = LatestSlot(lossless)
        self.events: queue.Queue[PendingEvent | None] = queue.Queue(maxsize=event_queue_size)
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}  # by role: capture, inference, events
        self.finished = threading.Event()  # the source ended (finite sources)
        self.last_progress = time.monotonic()  # the inference thread's heartbeat (for the watchdog)
        self.error: BaseException | None = None

    # --- threads --------------------------------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                self.health.inc("frames_captured")
                self.slot.put(frame)
        except Exception as err:  # noqa: BLE001 - a camera that raises is reported, and the pipeline winds down
            self.error = err
            log.error("capture stopped: %s", err)
        finally:
            self.finished.set()

    def _infer(self) -> None:
        while not self._stop.is_set():
            frame = self.slot.get(0.1)
            self.last_progress = time.monotonic()
            if frame is None:
                if self.finished.is_set() and self.slot.get(0) is None:
                    break
                continue
            if self.governor is not None and not self.governor.should_detect():
                self.health.inc("frames_skipped_thermal")
                continue
            try:
                self.process(frame)
            except Exception as err:
                self.error = err
                log.exception("inference failed on frame %s", frame.index)
                self.health.inc("inference_errors")
        self.health.set("frames_dropped", self.slot.dropped)

    def _emit(self) -> None:
        while True:
            item = self.events.get()
            if item is None:
                return
            try:
                self.sink(item.decision, item.frame, item.watchlist, item.chips)
                self.health.inc("events")
                self.health.observe("frame_to_event", time.monotonic() - item.frame.monotonic)
            except Exception:
                log.exception("event sink failed")
                self.health.inc("event_sink_errors")

    # --- one frame --------------------------------------------------------------------------------------------
    def process(self, frame: Frame) -> list[Decision]:
        """Detect, track, gate, embed what the tracks need, match and decide; returns this frame's decisions."""
        h = self.health
        t0 = time.perf_counter()
        detections = self.detector.detect(frame.rgb)
        h.observe("detect", time.perf_counter() - t0)
        h.tick("frames")
        h.inc("frames_processed")
        h.inc("faces", len(detections))
        now = frame.monotonic
        tracks = self.tracker.update(detections, now)
        for track_id in self.tracker.expired():
            self.policy.forget(track_id)
        watchlist = self.matches.watchlist()
        decisions = []
        for track in tracks:
            det = track.detection
            if track.embeds >= track.embed_budget:
                continue  # this track has used its embedding budget: no chip to cut, no quality to measure
            if det.eye_distance < self.quality.min_eye_distance:
                h.inc("quality_reject.face too small")
                continue
            t1 = time.perf_counter()
            # The gate and the ranking measure a cheap keypoint chip on every frame; the embedder's chip (landmarks
            # and all) is cut only when the tracker wants an embedding. The gate's limits were set on 150-px chips of
            # dlib's geometry: that chip whatever the embedder takes (MobileFaceNet's is 112 px, ArcFace geometry).
            gate_size = CHIP_SIZE if self.embed_face is not None else self.embedder.chip_size
            chip = align_face(frame.rgb, det.keypoints, gate_size)
            q = assess(det, chip, self.quality)
            if not q.ok:
                h.inc(f"quality_reject.{q.reason}")
                if self.trace is not None:
                    self.trace({"frame": frame.index, "track": track.track_id, "x": _center_x(det, frame),
                                "outcome": "quality", "reason": q.reason})
                continue
            score = quality_score(q)
            if not track.should_embed(score, now):
                continue
            embedding2 = None
            if self.embed_face is not None:
                face = self.embed_face(frame.rgb, det)
                chip, embedding, embedding2 = face.chip, face.embedding, face.embedding2
            else:
                embedding = self.embedder.embed(chip)
            track.record_embedding(score, embedding, now, embedding2)
            track.keep_chip(score, chip)
            h.observe("embed", time.perf_counter() - t1)
            h.inc("embeddings")
            if watchlist is None:
                continue
            t2 = time.perf_counter()
            result = watchlist.match(embedding, embedding2=embedding2)
            h.inc("searches")  # the operator's alert budget: searches × the list's FPIR
            h.observe("match", time.perf_counter() - t2)
            decision = self.policy.observe(track.track_id, result, now, q.to_json(), first_seen=track.first_seen)
            template = track.template() if decision is None and self.track_templates else None
            if template is not None:
                result = watchlist.match(template, embedding2=track.template(second=True))
                h.inc("searches")
                decision = self.policy.observe_template(track.track_id, result, track.embeds, now, q.to_json(),
                                                        first_seen=track.first_seen)
            if self.trace is not None and self.policy.last_outcome is not None:
                self.trace({"frame": frame.index, "track": track.track_id, "x": _center_x(det, frame),
                            **self.policy.last_outcome})
            if decision is not None:
                decisions.append(decision)
                try:
                    self.events.put_nowait(PendingEvent(decision, frame, watchlist, tuple(track.evidence())))
                except queue.Full:
                    h.inc("events_dropped")
        h.observe("frame", time.perf_counter() - t0)
        return decisions

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the source and start the capture, inference and event threads."""
        self.source.open()
        for role, target in (("capture", self._capture), ("inference", self._infer), ("events", self._emit)):
            t = threading.Thread(target=target, name=f"edge-{role}", daemon=True)
            t.start()
            self._threads[role] = t

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a finite source has been fully processed; True when done."""
        inference = self._threads["inference"]
        inference.join(timeout)
        return not inference.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop all threads (within `timeout` seconds in total) and close the source."""
        self._stop.set()
        self.slot.close()
        try:
            self.source.close()
        except Exception:  # closing a vanished camera must not block shutdown
            log.warning("closing the frame source failed", exc_info=True)
        deadline = time.monotonic() + timeout
        for role in ("capture", "inference"):  # the producers first, then the event thread drains the queue
            self._threads[role].join(max(0.0, deadline - time.monotonic()))
        self.events.put(None)
        self._threads["events"].join(max(0.0, deadline - time.monotonic()))


def _center_x(det: Detection, frame: Frame) -> float:
    """The detection's horizontal centre as a fraction of the frame width (0 left … 1 right)."""
    x0, _, x1, _ = det.box
    return round(float(x0 + x1) / 2 / max(1, frame.rgb.shape[1]), 3)
