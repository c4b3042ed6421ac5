"""The appliance's configuration schema: every section, key, default, unit and validated range (pydantic).

Every key has a default, a description with its unit and a validated range; unknown keys are refused. Reading a
file and reporting its problems (file, line, dotted key) is `edge.config`, which re-exports every name here.

Paths: `~` and `${VAR}` are expanded (e.g. `${CREDENTIALS_DIRECTORY}/device.key` under systemd's LoadCredential=);
a relative path is relative to the directory of the config file, never to the working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError


def _path(value: Any, info: ValidationInfo) -> Path:
    """A path field: `~` and `${VAR}` expanded, relative paths anchored at the config file's directory."""
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
    else:
        raise ValueError("must be a file or directory path (a string)")
    for name in re.findall(r"\$\{([^}]*)\}", text):
        if name not in os.environ:
            raise ValueError(f"uses ${{{name}}}, which is not set in the environment")
    text = re.sub(r"\$\{([^}]*)\}", lambda m: os.environ[m.group(1)], text)
    path = Path(text).expanduser()
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else Path(base) / path


ConfigPath = Annotated[Path, BeforeValidator(_path)]


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field error reported at `field` (dotted, relative to the model that raises it)."""
    return PydanticCustomError("config_field", message.replace("{", "{{").replace("}", "}}"), {"field": field})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceConfig(_Section):
    id: str = Field("edge-dev", pattern=r"^[A-Za-z0-9._-]{1,64}$",
                    description="Device id: MQTT topics, the certificate's CN and watchlist bundles name it. "
                                "1–64 characters from A–Z a–z 0–9 . _ -",
                    json_schema_extra={"pattern_text": "use 1–64 characters from A–Z a–z 0–9 . _ -"})
    state_dir: ConfigPath = Field(Path("/var/lib/edge"), description="Writable directory for keys, the installed "
                                  "watchlist, the outbox and the audit log (systemd StateDirectory=)")
    topic_prefix: str = Field("edge", pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", max_length=128,
                              description="First level(s) of every MQTT topic: <prefix>/<device.id>/…; no + or #",
                              json_schema_extra={"pattern_text": "use levels of A–Z a–z 0–9 . _ - separated by /, "
                                                                 "no wildcards, no leading or trailing /"})


class CameraConfig(_Section):
    source: Literal["opencv", "picamera2", "replay"] = Field(
        "opencv", description="Frame source: opencv (USB/V4L2, RTSP/HTTP, video files, GStreamer), picamera2 "
                              "(Raspberry Pi CSI camera) or replay (a folder of images, for tests and demos)")
    device: Union[int, str] = Field(0, description="What to open: a V4L2 index (0 = /dev/video0), an RTSP/HTTP "
                                    "URL, a video file or image folder, or a GStreamer pipeline ending in appsink; "
                                    "picamera2: the libcamera camera index")
    width: int = Field(1280, ge=64, le=7680, description="Capture width, pixels (the camera may pick the nearest mode)")
    height: int = Field(720, ge=48, le=4320, description="Capture height, pixels")
    fps: float = Field(30.0, gt=0, le=240, description="Requested frame rate, frames per second; replay paces to it")
    lores_width: int = Field(640, ge=64, le=4096, description="picamera2 only: width of the low-resolution stream "
                             "that inference sees (detection and face chips), pixels; even, ≤ camera.width")
    lores_height: int = Field(360, ge=48, le=4096, description="picamera2 only: height of the inference stream, "
                              "pixels; even, ≤ camera.height")
    fourcc: str | None = Field(None, pattern=r"^[A-Za-z0-9 ]{4}$", description="opencv cameras only: pixel format "
                               "to request, e.g. MJPG (lets USB cameras reach 720p at 30 fps); null = the camera's",
                               json_schema_extra={"pattern_text": "use a four-character code such as MJPG or YUYV"})
    replay_pace: Literal["realtime", "fast"] = Field("realtime", description="Files and replay: realtime delivers "
                                                     "at camera.fps, fast as quickly as frames decode")
    loop: bool = Field(False, description="Files and replay: start again at the end instead of stopping")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First wait before re-opening a failed camera or "
                                   "stream, seconds; doubles on each failure")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between re-open attempts, seconds")

    @field_validator("device", mode="before")
    @classmethod
    def _device_type(cls, dev: Any) -> Any:
        if isinstance(dev, bool) or not isinstance(dev, (int, str)):
            raise ValueError("must be a V4L2 index (an integer) or a string: URL, file path or GStreamer pipeline")
        return int(dev) if isinstance(dev, str) and dev.strip().isdigit() else dev  # "0" means index 0

    @model_validator(mode="after")
    def _ranges(self) -> "CameraConfig":
        if self.reconnect_min_s > self.reconnect_max_s:
            raise _field_error("reconnect_min_s", f"must be ≤ camera.reconnect_max_s ({self.reconnect_max_s:g})")
        if self.source == "picamera2":
            if not isinstance(self.device, int):
                raise _field_error("device", "must be the libcamera camera index (0, 1, …) when camera.source is "
                                             "picamera2")
            for name in ("width", "height", "lores_width", "lores_height"):
                if getattr(self, name) % 2:
                    raise _field_error(name, "must be an even number of pixels for picamera2 (YUV420)")
            if self.lores_width > self.width:
                raise _field_error("lores_width", f"must be ≤ camera.width ({self.width})")
            if self.lores_height > self.height:
                raise _field_error("lores_height", f"must be ≤ camera.height ({self.height})")
        return self


class VisionConfig(_Section):
    detector: str | None = Field(None, description="Detector model name in models/manifest.json; null = the "
                                 "manifest's default (BlazeFace full-range int8)")
    embedder: str | None = Field(None, description="Embedder model name in models/manifest.json; null = the "
                                 "manifest's default (MobileFaceNet). Must match the watchlist's embedder")
    threads: int = Field(2, ge=1, le=64, description="CPU threads per TFLite interpreter (detector and embedder "
                         "run one after the other, so this is the inference thread's share of the cores)")
    backend: Literal["auto", "litert", "tflite-runtime"] = Field(
        "auto", description="TFLite runtime: auto tries LiteRT (ai-edge-litert), then tflite-runtime")
    delegate: str | None = Field(None, description="Delegate library for the detector, e.g. libedgetpu.so.1 "
                                 "(Coral Edge TPU); null = CPU (XNNPACK)")
    min_score: float = Field(0.5, ge=0, le=1, description="Detector threshold, probability 0–1: faces below it "
                             "are not tracked")
    flip: bool = Field(True, description="Average each chip's embedding with its mirror image's: more accurate "
                       "(dev open set: FNIR at FPIR 0.003 0.53 → 0.47), twice the embedding time")
    alignment: Literal["auto", "onet", "dlib5", "keypoints"] = Field(
        "auto", description="How chips are cut: auto = the embedder's own (onet for MobileFaceNet, dlib5 for dlib's "
        "ResNet); onet = MTCNN ONet's five points (~0.8 ms) to the 112-px ArcFace template; dlib5 = dlib's 5-point "
        "landmarks (numpy, ~1 ms) then dlib's own chip; keypoints = a fit to BlazeFace's keypoints (less accurate)")
    fusion: bool = Field(True, description="Also run the manifest's second embedder (HSE faceres) and fuse its score "
                         "with dlib's (dev open set: FNIR at FPIR 0.003 0.460 → 0.405 on portraits); needs alignment "
                         "dlib5 and a watchlist built with fusion")
    models_dir: ConfigPath | None = Field(None, description="Directory with manifest.json and the .tflite files; "
                                          "null = $EDGE_MODELS_DIR, the source checkout or /usr/share/edge/models")


class QualityConfig(_Section):
    min_eye_distance_px: float = Field(24.0, ge=0, le=2000, description="Smallest distance between the eyes, "
                                       "pixels of the inference image; smaller faces are tracked, not embedded")
    min_sharpness: float = Field(0.40, ge=0, le=1, description="Least sharpness 0–1: one minus the blur effect "
                                 "of the face measured at its own resolution (sharp faces 0.5–0.7, a 2 px blur ≈ 0.3)")
    max_yaw: float = Field(0.45, ge=0, le=2, description="Largest head turn: |nose offset from the eye midpoint| / "
                           "eye distance (0 = frontal, ~1 = profile)")
    max_roll_deg: float = Field(35.0, ge=0, le=180, description="Largest head tilt: angle of the eye line, degrees")
    min_score: float = Field(0.6, ge=0, le=1, description="Least detector probability 0–1 for a chip to be "
                             "embedded (stricter than vision.min_score, which only starts tracks)")


class TrackingConfig(_Section):
    iou_threshold: float = Field(0.3, gt=0, lt=1, description="Least box overlap (intersection over union, 0–1) "
                                 "for a detection to continue a track")
    max_age_s: float = Field(1.0, gt=0, le=60, description="A track not seen for this long ends, seconds")
    embed_budget: int = Field(5, ge=1, le=100, description="Most chips embedded per track, count")
    reembed_after_s: float = Field(0.5, gt=0, le=60, description="After this long, seconds, a track embeds another "
                                   "chip even without a better one (≥ 0.8 × the best's quality), so a still face "
                                   "gathers the votes the policy needs")
    embed_improvement: float = Field(1.15, ge=1, le=10, description="Factor by which a chip's quality must beat "
                                     "the best already embedded for the track to embed it")


class PolicyConfig(_Section):
    """When a track's matches become an event: the `policy:` section and `DecisionPolicy`'s settings, one class.

    k: agreeing results needed among a track's last n. threshold: least cosine similarity; margin: least cosine gap
    to the best other subject; None = each Match's own (the watchlist's). cooldown_s: seconds before the same subject
    can be decided again (from any track). Frozen.

    Built by keyword in code (`PolicyConfig(k=2, n=3)`) or validated from the config file, a bad value is the same
    pydantic ValidationError (a ValueError) naming the key; `load_config` turns it into one line with file and line.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(2, ge=1, le=100, description="Votes needed: k of the last n embedded chips of a track must name "
                   "the same subject, count")
    n: int = Field(3, ge=1, le=100, description="Window of embedded chips a track votes over, count")
    margin: float | None = Field(None, ge=0, le=2, description="Least cosine gap between the best and second-best "
                                 "subject; null = the watchlist's")
    threshold: float | None = Field(None, ge=-1, le=1, description="Least cosine similarity for a vote; null = the "
                                    "watchlist's (set by `edge eval openset` for its size)")
    cooldown_s: float = Field(60.0, ge=0, le=86400, description="After an event, the same (track, subject) stays "
                              "quiet this long, seconds")

    @model_validator(mode="after")
    def _k_of_n(self) -> "PolicyConfig":
        if self.k > self.n:
            raise _field_error("k", f"must be ≤ policy.n ({self.n})")
        return self


class WatchlistConfig(_Section):
    device_key: ConfigPath | None = Field(None, description="This device's X25519 private key (PEM, mode 0600); "
                                          "null = <device.state_dir>/keys/device.key",
                                          json_schema_extra={"default_text": "<device.state_dir>/keys/device.key"})
    trusted_keys: Union[ConfigPath, list[ConfigPath], None] = Field(
        None, description="Operator keys that may sign watchlists: a trust-store JSON (edge-operator-trust/1, "
                          "rewritten on key rotation) or a list of Ed25519 public-key PEM files; null = "
                          "<device.state_dir>/keys/operators.json",
        json_schema_extra={"default_text": "<device.state_dir>/keys/operators.json"})
    stale_after_expiry: Literal["keep_serving", "stop"] = Field(
        "keep_serving", description="When the installed watchlist expires: keep_serving (and report stale) or stop "
                                    "matching until a fresh one arrives")
    max_bundle_mb: int = Field(512, ge=1, le=16384, description="Largest watchlist bundle an offer may announce, "
                               "MiB: a bigger offer is refused unread (a 300,000-subject list is ~140 MiB; the chunks "
                               "of an accepted one are checked against the offer's sizes as they arrive)")

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _trusted_type(cls, keys: Any) -> Any:
        if keys is None or isinstance(keys, (str, Path)):
            return keys
        if isinstance(keys, list) and keys and all(isinstance(k, (str, Path)) for k in keys):
            return keys
        raise ValueError("must be a path (the trust-store JSON) or a non-empty list of public-key paths")


class MqttConfig(_Section):
    enabled: bool = Field(True, description="Publish events and status, receive watchlists; false = events stay "
                          "in the outbox")
    host: str = Field("localhost", min_length=1, description="Broker host name or address")
    port: int = Field(8883, ge=1, le=65535, description="Broker TCP port (8883 = MQTT over TLS)")
    ca_file: ConfigPath | None = Field(None, description="CA certificate (PEM) that signed the broker's; null = "
                                       "no TLS")
    cert_file: ConfigPath | None = Field(None, description="This device's client certificate (PEM); its CN is "
                                         "the device id")
    key_file: ConfigPath | None = Field(None, description="Private key of cert_file (PEM)")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds: the broker declares us "
                             "offline (last will) after 1.5× this")
    status_interval_s: float = Field(30.0, gt=0, le=3600, description="Period of the retained status message, "
                                     "seconds")

    @model_validator(mode="after")
    def _client_cert(self) -> "MqttConfig":
        if self.cert_file is not None and self.key_file is None:
            raise _field_error("cert_file", "needs mqtt.key_file as well (the certificate's private key)")
        if self.key_file is not None and self.cert_file is None:
            raise _field_error("key_file", "needs mqtt.cert_file as well (the certificate of this key)")
        return self


class EventsConfig(_Section):
    thumbnails: bool | None = Field(None, description="Evidence for the reviewers: each match event carries the "
                                    "track's best face chip(s) as JPEG sealed to the operator's evidence key. Unset "
                                    "(default): on when operator_thumbnail_key names a file that exists; true: on, "
                                    "the key required; false: no face ever leaves the device")
    operator_thumbnail_key: ConfigPath | None = Field(None, description="The operator's X25519 evidence public key "
                                                      "(PEM, `edge keys generate evidence`) that face chips are "
                                                      "sealed to; the profiles expect /etc/edge/operator-evidence.pub")
    outbox_max_events: int = Field(100_000, ge=100, le=100_000_000, description="Most unacknowledged events kept; "
                                   "the oldest are dropped (and counted) beyond it, count")
    outbox_max_age_days: float = Field(7.0, gt=0, le=3650, description="Unacknowledged events older than this are "
                                       "dropped (and counted), days")

    @model_validator(mode="after")
    def _thumbnail_key(self) -> "EventsConfig":
        if self.thumbnails and self.operator_thumbnail_key is None:
            raise _field_error("thumbnails", "true needs events.operator_thumbnail_key (the operator's public key "
                                             "that thumbnails are encrypted to)")
        return self

    def evidence_key(self) -> Path | None:
        """The evidence key file the device seals face chips to, or None (evidence off): `thumbnails: false`, or
        unset with no key file at `operator_thumbnail_key`. With `thumbnails: true` the file must exist (the
        loader says so when it does not)."""
        if self.thumbnails is False or self.operator_thumbnail_key is None:
            return None
        if self.thumbnails is None and not self.operator_thumbnail_key.exists():
            return None
        return self.operator_thumbnail_key


class HealthConfig(_Section):
    log_interval_s: float = Field(60.0, gt=0, le=86400, description="Period of the health summary in the log, "
                                  "seconds")


class ThermalConfig(_Section):
    enabled: bool = Field(True, description="Watch the CPU temperature and detect on fewer frames when it runs hot")
    zones: str = Field("/sys/class/thermal/thermal_zone*/temp", min_length=1, max_length=512,
                       description="Glob of the kernel's thermal zone files (millidegrees Celsius); the hottest counts")
    hot_c: float = Field(80.0, gt=0, le=150, description="Throttle at or above this CPU temperature, degrees Celsius "
                         "(a Raspberry Pi 4/5 itself slows its clock from 80–85 °C)")
    cool_c: float = Field(70.0, gt=0, le=150, description="Stop throttling at or below this temperature, degrees "
                          "Celsius (below thermal.hot_c: the gap keeps it from flapping)")
    throttled_detect_every: int = Field(3, ge=2, le=30, description="While throttled, run detection on one frame in "
                                        "this many, count (tracks bridge the gaps)")
    poll_interval_s: float = Field(2.0, gt=0, le=600, description="How often the temperature is read, seconds")

    @model_validator(mode="after")
    def _hysteresis(self) -> "ThermalConfig":
        if self.cool_c >= self.hot_c:
            raise _field_error("cool_c", f"must be below thermal.hot_c ({self.hot_c:g})")
        return self


class Config(_Section):
    """The whole configuration; every section may be left out."""

    device: DeviceConfig = Field(default_factory=DeviceConfig, description="Identity and storage")
    camera: CameraConfig = Field(default_factory=CameraConfig, description="Where frames come from")
    vision: VisionConfig = Field(default_factory=VisionConfig, description="Models and inference runtime")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Which faces are worth embedding")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Following faces across frames")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="When a track becomes a match event")
    watchlist: WatchlistConfig = Field(default_factory=WatchlistConfig, description="Keys and watchlist lifecycle")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Match events and the durable outbox")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health reporting")
    thermal: ThermalConfig = Field(default_factory=ThermalConfig, description="CPU temperature and throttling")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `camera:` with nothing under it means "all defaults", as in ESPHome.
        if isinstance(data, dict):
            return {k: ({} if v is None and k in cls.model_fields else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _cross_sections(self) -> "Config":
        keys = self.device.state_dir / "keys"
        if self.watchlist.device_key is None:
            self.watchlist.device_key = keys / "device.key"
        if self.watchlist.trusted_keys is None:
            self.watchlist.trusted_keys = keys / "operators.json"
        if self.policy.k > self.tracking.embed_budget:
            raise _field_error("policy.k", f"must be ≤ tracking.embed_budget ({self.tracking.embed_budget}): a "
                                           "track embeds at most that many chips")
        return self
