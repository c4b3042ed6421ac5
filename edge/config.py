"""The appliance's configuration: one YAML file, validated against the schema of `edge.config_models`.

`load_config` reports every problem at once, one line each, naming file, line and dotted key, with a suggestion
for an unknown key:

    firmware-config/profiles/pi4.yaml, line 12: camera.fpz: unknown key (did you mean 'fps'?)

`describe` and `dump_defaults` document every key from the schema. The schema's names (`Config`, its sections)
are re-exported here: `from edge.config import Config, load_config` is the way in.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from edge.config_models import (CameraConfig, Config, ConfigPath, DeviceConfig, EventsConfig, HealthConfig,
                                MqttConfig, PolicyConfig, QualityConfig, ThermalConfig, TrackingConfig, VisionConfig,
                                WatchlistConfig)
from edge.errors import EdgeError

__all__ = ["CameraConfig", "Config", "ConfigError", "ConfigPath", "DeviceConfig", "EventsConfig", "HealthConfig",
           "MAX_CONFIG_BYTES", "MqttConfig", "PolicyConfig", "QualityConfig", "RENAMED", "ThermalConfig",
           "TrackingConfig", "VisionConfig", "WatchlistConfig", "describe", "dump_defaults", "load_config",
           "parse_config"]


class ConfigError(EdgeError):
    """The config file is missing, is not YAML, or breaks the schema; one line per problem."""


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


def _describe_error(err: ErrorDetails, data: Any) -> tuple[Key, str]:
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
        def compose_node(self, parent, index):
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
