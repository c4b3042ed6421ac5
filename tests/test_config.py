"""Config: every profile loads, defaults round-trip, and each kind of mistake gets the exact message a user sees."""

from pathlib import Path

import pytest

from edge.config import Config, ConfigError, describe, dump_defaults, load_config, parse_config
from edge.errors import EdgeError

PROFILES = Path(__file__).resolve().parent.parent / "firmware-config" / "profiles"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).replace(str(path), "edge.yaml")


@pytest.mark.parametrize("name", ["pi4", "pi5", "jetson", "x86"])
def test_every_profile_loads(name):
    config = load_config(PROFILES / f"{name}.yaml")
    assert config.device.id
    assert config.policy.k <= config.policy.n
    assert (PROFILES / "README.md").read_text().count(f"`{name}.yaml`") >= 1


def test_profiles_choose_their_camera():
    pi4, jetson, x86 = (load_config(PROFILES / f"{n}.yaml") for n in ("pi4", "jetson", "x86"))
    assert (pi4.camera.source, pi4.camera.lores_width, pi4.camera.lores_height) == ("picamera2", 640, 360)
    assert jetson.camera.source == "opencv" and jetson.camera.device.startswith("nvarguscamerasrc")
    assert "\n" not in jetson.camera.device and jetson.camera.device.rstrip().endswith("sync=false")
    assert (x86.camera.source, x86.camera.device) == ("opencv", 0)
    assert x86.device.state_dir == Path("~/.local/state/edge").expanduser()


def test_empty_file_gives_the_defaults(tmp_path):
    config = load_config(_write(tmp_path, ""))
    assert config == Config()
    assert config.camera.fps == 30 and config.vision.threads == 2 and config.events.thumbnails is None
    assert config.watchlist.device_key == Path("/var/lib/edge/keys/device.key")
    assert config.watchlist.trusted_keys == Path("/var/lib/edge/keys/operators.json")


def test_empty_section_means_defaults(tmp_path):
    assert load_config(_write(tmp_path, "camera:\nvision:\n")) == Config()


def test_key_defaults_follow_state_dir_and_relative_paths_follow_the_file(tmp_path):
    config = load_config(_write(tmp_path, "device:\n  state_dir: state\nmqtt:\n  ca_file: tls/ca.crt\n"))
    assert config.device.state_dir == tmp_path / "state"
    assert config.watchlist.device_key == tmp_path / "state" / "keys" / "device.key"
    assert config.mqtt.ca_file == tmp_path / "tls" / "ca.crt"


def test_environment_variables_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edge.service")
    config = load_config(_write(tmp_path, "watchlist:\n  device_key: ${CREDENTIALS_DIRECTORY}/device.key\n"))
    assert config.watchlist.device_key == Path("/run/credentials/edge.service/device.key")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert _error(tmp_path, "watchlist:\n  device_key: ${CREDENTIALS_DIRECTORY}/device.key\n") == (
        "edge.yaml, line 2: watchlist.device_key: uses ${CREDENTIALS_DIRECTORY}, which is not set in the environment")


def test_trusted_keys_may_be_a_list_of_pem_files(tmp_path):
    config = load_config(_write(tmp_path, "watchlist:\n  trusted_keys: [/etc/edge/op1.pub, /etc/edge/op2.pub]\n"))
    assert config.watchlist.trusted_keys == [Path("/etc/edge/op1.pub"), Path("/etc/edge/op2.pub")]


def test_quoted_camera_index_is_an_index(tmp_path):
    assert load_config(_write(tmp_path, "camera:\n  device: '1'\n")).camera.device == 1


def test_unknown_key_suggests_the_closest(tmp_path):
    assert _error(tmp_path, "device:\n  id: cam-1\ncamera:\n  fpz: 25\n") == (
        "edge.yaml, line 4: camera.fpz: unknown key (did you mean 'fps'?)")


def test_unknown_key_without_a_close_match_lists_the_keys(tmp_path):
    assert _error(tmp_path, "health:\n  colour: red\n") == (
        "edge.yaml, line 2: health.colour: unknown key; known keys: log_interval_s")


def test_unknown_section(tmp_path):
    assert _error(tmp_path, "cameras:\n  fps: 1\n") == (
        "edge.yaml, line 1: cameras: unknown key (did you mean 'camera'?)")


def test_bad_type(tmp_path):
    assert _error(tmp_path, "# comment\n\nvision:\n  threads: many\n") == (
        "edge.yaml, line 4: vision.threads: Input should be a valid integer, unable to parse string as an integer")


def test_out_of_range(tmp_path):
    assert _error(tmp_path, "vision:\n  min_score: 1.5\n") == (
        "edge.yaml, line 2: vision.min_score: Input should be less than or equal to 1")


def test_k_greater_than_n(tmp_path):
    text = "policy:\n  n: 3\n  # votes\n  k: 4\n"
    assert _error(tmp_path, text) == "edge.yaml, line 4: policy.k: must be ≤ policy.n (3)"


def test_k_beyond_the_embed_budget(tmp_path):
    assert _error(tmp_path, "tracking:\n  embed_budget: 2\npolicy:\n  k: 3\n  n: 4\n") == (
        "edge.yaml, line 4: policy.k: must be ≤ tracking.embed_budget (2): a track embeds at most that many chips")


def test_renamed_key(tmp_path):
    assert _error(tmp_path, "camera:\n  resolution: [1920, 1080]\n") == (
        "edge.yaml, line 2: camera.resolution: was replaced by camera.width and camera.height")


def test_several_problems_one_line_each_in_file_order(tmp_path):
    text = "policy:\n  cooldown: 5\ncamera:\n  fps: -1\n  width: wide\n"
    assert _error(tmp_path, text).splitlines() == [
        "edge.yaml, line 2: policy.cooldown: was replaced by policy.cooldown_s (seconds)",
        "edge.yaml, line 4: camera.fps: Input should be greater than 0",
        "edge.yaml, line 5: camera.width: Input should be a valid integer, unable to parse string as an integer",
    ]


def test_yaml_syntax_error(tmp_path):
    assert _error(tmp_path, "camera:\n  fps: 30\n mqtt: x\n") == (
        "edge.yaml, line 3: not valid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 1)")


def test_duplicate_key(tmp_path):
    assert _error(tmp_path, "camera:\n  fps: 30\n  fps: 25\n") == (
        "edge.yaml, line 3: camera.fps: duplicate key (first at line 2)")


def test_top_level_must_be_a_mapping(tmp_path):
    assert _error(tmp_path, "- camera\n") == (
        "edge.yaml, line 1: the top level must be a mapping of sections (device:, camera:, …), not list")


def test_section_must_be_a_mapping(tmp_path):
    assert _error(tmp_path, "camera: 0\n") == (
        "edge.yaml, line 1: camera: must be a mapping of keys (key: value lines), not int")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: config file not found"
    assert isinstance(info.value, EdgeError)


def test_thumbnails_need_the_operator_key(tmp_path):
    assert _error(tmp_path, "events:\n  thumbnails: true\n") == (
        "edge.yaml, line 2: events.thumbnails: true needs events.operator_thumbnail_key (the operator's public key "
        "that thumbnails are encrypted to)")
    config = load_config(_write(tmp_path, "events:\n  thumbnails: true\n  operator_thumbnail_key: op.pub\n"))
    assert config.events.operator_thumbnail_key == tmp_path / "op.pub"
    assert config.events.evidence_key() == tmp_path / "op.pub"  # explicitly on: the loader reports a missing file


def test_evidence_is_on_by_default_once_the_operator_key_is_provisioned(tmp_path):
    cfg = _write(tmp_path, "events:\n  operator_thumbnail_key: operator-evidence.pub\n")
    assert load_config(cfg).events.evidence_key() is None  # not provisioned (yet): no face leaves the device
    (tmp_path / "operator-evidence.pub").write_text("a PEM")
    assert load_config(cfg).events.evidence_key() == tmp_path / "operator-evidence.pub"
    off = _write(tmp_path, "events:\n  thumbnails: false\n  operator_thumbnail_key: operator-evidence.pub\n")
    assert load_config(off).events.evidence_key() is None
    assert load_config(_write(tmp_path, "device:\n  id: a\n")).events.evidence_key() is None


def test_picamera2_checks(tmp_path):
    assert _error(tmp_path, "camera:\n  source: picamera2\n  width: 320\n  height: 240\n") == (
        "edge.yaml, line 1: camera.lores_width: must be ≤ camera.width (320)")
    assert _error(tmp_path, "camera:\n  source: picamera2\n  lores_width: 641\n") == (
        "edge.yaml, line 3: camera.lores_width: must be an even number of pixels for picamera2 (YUV420)")
    assert _error(tmp_path, "camera:\n  source: picamera2\n  device: /dev/video0\n") == (
        "edge.yaml, line 3: camera.device: must be the libcamera camera index (0, 1, …) when camera.source is "
        "picamera2")


def test_client_certificate_needs_its_key(tmp_path):
    assert _error(tmp_path, "mqtt:\n  cert_file: device.crt\n") == (
        "edge.yaml, line 2: mqtt.cert_file: needs mqtt.key_file as well (the certificate's private key)")


def test_device_id_pattern_is_explained(tmp_path):
    assert _error(tmp_path, "device:\n  id: front door\n") == (
        "edge.yaml, line 2: device.id: 'front door' is not allowed: use 1–64 characters from A–Z a–z 0–9 . _ -")


def test_literal_choices(tmp_path):
    assert _error(tmp_path, "camera:\n  source: usb\n") == (
        "edge.yaml, line 2: camera.source: Input should be 'opencv', 'picamera2' or 'replay'")


def test_parse_config_names_its_source():
    with pytest.raises(ConfigError) as info:
        parse_config("vision:\n  thread: 2\n", source="inline")
    assert str(info.value) == "inline, line 2: vision.thread: unknown key (did you mean 'threads'?)"


def test_dump_defaults_round_trips_and_teaches():
    text = dump_defaults()
    assert parse_config(text) == Config()
    assert "  # Requested frame rate, frames per second" in text and "\n  fps: 30.0\n" in text


def test_describe_lists_every_key_with_default_and_description():
    text = describe()
    for section, field in Config.model_fields.items():
        for key in field.annotation.model_fields:
            assert f"\n{section}.{key}: " in "\n" + text, f"{section}.{key}"
    assert "camera.fps: number = 30.0  (> 0, ≤ 240)\n    Requested frame rate, frames per second" in text
    assert "watchlist.device_key: path | null = <device.state_dir>/keys/device.key" in text


def test_every_field_has_a_description_and_a_default():
    for field in Config.model_fields.values():
        section = field.annotation
        assert section.model_config.get("extra") == "forbid"
        for name, sub in section.model_fields.items():
            assert sub.description, name
            assert not sub.is_required(), name


def test_new_recognition_settings_are_checked(tmp_path):
    """The fields recognition added: sharpness is a 0–1 figure now, re-embedding needs a positive interval, and the
    alignment is one of four names."""
    text = "quality:\n  min_sharpness: 40\ntracking:\n  reembed_after_s: 0\nvision:\n  alignment: dlib68\n"
    assert _error(tmp_path, text).splitlines() == [
        "edge.yaml, line 2: quality.min_sharpness: Input should be less than or equal to 1",
        "edge.yaml, line 4: tracking.reembed_after_s: Input should be greater than 0",
        "edge.yaml, line 6: vision.alignment: Input should be 'auto', 'onet', 'dlib5' or 'keypoints'",
    ]
