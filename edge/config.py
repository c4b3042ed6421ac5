"""The appliance's configuration: one YAML file, validated against a pydantic schema that teaches.

Every key has a default, a description with its unit and a validated range; unknown keys are refused with a
suggestion. `load_config` reports every problem at once, one line each, naming file, line and dotted key:

    firmware-config/profiles/pi4.yaml, line 12: camera.fpz: unknown key (did you mean 'fps'?)

Paths: `~` and `${VAR}` are expanded (e.g. `${CREDENTIALS_DIRECTORY}/device.key` under systemd's LoadCredential=);
a relative path is relative to the directory of the config file, never to the working directory.

Lines: the whole config schema (every section, default, range and description) is one document, on purpose.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from edge.errors import EdgeError


class ConfigError(EdgeError):
    """The config file is missing, is not YAML, or breaks the schema; one line per problem."""


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


#: Keys that were renamed or split: dotted key → what replaced it.
RENAMED: dict[str, str] = {
    "camera.resolution": "was replaced by camera.width and camera.height",
    "camera.framerate": "was replaced by camera.fps",
    "camera.lores": "was replaced by camera.lores_width and camera.lores_height",
    "camera.index": "was replaced by camera.device",
    "device.name": "was replaced by device.id",
    "vision.score_threshold": "was replaced by vision.min_score",
    "quality.min_eye_distance": "was replaced by quality.min_eye_distance_px (pixels)",
    "quality.max_roll": "was replaced by quality.max_roll_deg (degrees)",
    "policy.cooldown": "was replaced by policy.cooldown_s (seconds)",
    "mqtt.keepalive": "was replaced by mqtt.keepalive_s (seconds)",
    "mqtt.tls": "was replaced by mqtt.ca_file, mqtt.cert_file and mqtt.key_file",
}

# --- loading ----------------------------------------------------------------------------------------------------

Key = tuple[str, ...]


def _key_lines(node: Any, prefix: Key, lines: dict[Key, int], problems: list[tuple[int, str]]) -> None:
    """Record the 1-based line of every mapping key below `node`; report duplicate keys."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (str(key_node.value),)
            line = key_node.start_mark.line + 1
            if key in lines and key_node.value != "<<":
                problems.append((line, f"{'.'.join(key)}: duplicate key (first at line {lines[key]})"))
            lines.setdefault(key, line)
            _key_lines(value_node, key, lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(prefix + (str(i),), item.start_mark.line + 1)
            _key_lines(item, prefix + (str(i),), lines, problems)


def _model_at(key: Key) -> type[BaseModel] | None:
    """The section model that `key` (a dotted path) lives in, for suggestions."""
    model: Any = Config
    for part in key[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _data_key(loc: tuple, data: Any) -> Key:
    """The part of a pydantic `loc` that names keys in the input (drops union-member tags such as 'int')."""
    key: list[str] = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            break
        key.append(str(part))
    return tuple(key)


def _describe_error(err: dict, data: Any) -> tuple[Key, str]:
    loc = tuple(err["loc"])
    if err["type"] == "config_field":
        loc += tuple(err["ctx"]["field"].split("."))
        return tuple(str(p) for p in loc), err["msg"]
    key = _data_key(loc, data)
    if err["type"] == "extra_forbidden":
        dotted = ".".join(key)
        if dotted in RENAMED:
            return key, RENAMED[dotted]
        model = _model_at(key)
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key[-1], known, n=1, cutoff=0.6)
        if close:
            return key, f"unknown key (did you mean {close[0]!r}?)"
        return key, f"unknown key; known keys: {', '.join(known)}"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return key, f"must be a mapping of keys (key: value lines), not {type(err['input']).__name__}"
    if err["type"] == "string_pattern_mismatch":
        model = _model_at(key)
        extra = model.model_fields[key[-1]].json_schema_extra if model and key[-1] in model.model_fields else None
        if isinstance(extra, dict) and "pattern_text" in extra:
            return key, f"{err['input']!r} is not allowed: {extra['pattern_text']}"
    msg = err["msg"].removeprefix("Value error, ")
    return key, msg


def _line_of(key: Key, lines: dict[Key, int]) -> int | None:
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            return lines[key[:n]]
    return None


def _format(source: str, problems: list[tuple[int | None, str]]) -> str:
    rows = sorted(problems, key=lambda p: (p[0] is None, p[0] or 0))
    return "\n".join(f"{source}, line {line}: {text}" if line else f"{source}: {text}" for line, text in rows)


#: Largest config file read, bytes; a config is a few KiB.
MAX_CONFIG_BYTES = 256 * 1024


def _no_alias_loader() -> type:
    """yaml.SafeLoader refusing aliases (`*name`): a config never needs them, and a few hundred bytes of nested
    aliases expand to gigabytes (the "billion laughs")."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.MarkedYAMLError(None, None, "YAML aliases (*name) are not allowed in a config",
                                           event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate YAML `text`; `source` names it in messages; relative paths are anchored at `base_dir`."""
    import yaml

    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(_format(source, [(None, f"is {len(text)} characters; a config is at most "
                                                  f"{MAX_CONFIG_BYTES} bytes")]))
    loader = _no_alias_loader()
    try:
        root = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        text = f"not valid YAML: {err.problem or err.context}"
        if err.problem and err.context and err.context_mark and err.context_mark.line + 1 != line:
            text += f" ({err.context} at line {err.context_mark.line + 1})"
        raise ConfigError(_format(source, [(line, text)])) from None
    except yaml.YAMLError as err:
        raise ConfigError(_format(source, [(None, f"not valid YAML: {err}")])) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(_format(source, [(1, "the top level must be a mapping of sections (device:, camera:, …), "
                                               f"not {type(data).__name__}")]))
    lines: dict[Key, int] = {}
    problems: list[tuple[int | None, str]] = []
    _key_lines(root, (), lines, problems)  # type: ignore[arg-type]
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        for item in err.errors():
            key, msg = _describe_error(item, data)
            problems.append((_line_of(key, lines), f"{'.'.join(key)}: {msg}" if key else msg))
    if problems:
        raise ConfigError(_format(source, problems))
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises `ConfigError` listing every problem (file, line, key)."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: is {path.stat().st_size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file ({getattr(err, 'strerror', None) or err})") from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)


# --- documentation ----------------------------------------------------------------------------------------------

def _fields(schema: dict) -> list[tuple[str, str, dict]]:
    """(section, key, property schema) for every key, in declaration order."""
    defs, out = schema.get("$defs", {}), []
    for section, prop in schema["properties"].items():
        ref = prop.get("$ref") or prop.get("allOf", [{}])[0].get("$ref", "")
        for key, sub in defs[ref.rsplit("/", 1)[-1]]["properties"].items():
            out.append((section, key, sub))
    return out


def _type_text(prop: dict) -> str:
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"])
    if "const" in prop:
        return str(prop["const"])
    if "anyOf" in prop:
        return " | ".join(_type_text(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list of {_type_text(prop.get('items', {}))}"
    kind = {"string": "path" if prop.get("format") == "path" else "string", "number": "number",
            "integer": "integer", "boolean": "true | false", "null": "null"}
    return kind.get(prop.get("type", ""), "any")


def _range_text(prop: dict) -> str:
    parts = [f"{op} {prop[k]:g}" for k, op in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                                               ("exclusiveMaximum", "<")) if k in prop]
    for p in prop.get("anyOf", []):
        if _range_text(p):
            parts.append(_range_text(p))
    return ", ".join(parts)


def describe() -> str:
    """Every key with its type, default, range and description (for `edge config --describe`)."""
    out = []
    for section, key, prop in _fields(Config.model_json_schema()):
        default = prop.get("default_text") or _yaml_scalar(prop.get("default"))
        rng = _range_text(prop)
        out.append(f"{section}.{key}: {_type_text(prop)} = {default}" + (f"  ({rng})" if rng else ""))
        out.append(f"    {prop.get('description', '')}")
    return "\n".join(out) + "\n"


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...").strip()


def dump_defaults() -> str:
    """A YAML config of all defaults, each key commented with its description; `parse_config` accepts it."""
    import textwrap

    schema, out, last = Config.model_json_schema(), ["# edge appliance configuration: every key and its default."], ""
    for section, key, prop in _fields(schema):
        if section != last:
            out += ["", f"{section}:  # {schema['properties'][section].get('description', '')}"]
            last = section
        note = prop.get("description", "")
        out += textwrap.wrap(note, 110, initial_indent="  # ", subsequent_indent="  # ")
        out.append(f"  {key}: {_yaml_scalar(prop.get('default'))}")
    return "\n".join(out) + "\n"
