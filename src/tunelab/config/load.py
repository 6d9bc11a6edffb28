"""Loading a config: YAML file -> dotted `key=value` overrides -> validated `Config`, with errors that
name the file, the key and a did-you-mean suggestion."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.schema import Config
from tunelab.core.errors import ConfigError


def _model_for(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for key in path:
        if model is None:
            return None
        field = _fields(model).get(str(key))
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    out = {}
    for name, f in model.model_fields.items():
        out[f.alias or name] = f
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the config:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(x) for x in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _model_for(loc[:-1])
            known = sorted(_fields(parent)) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join(str(x) for x in loc[:-1] + (close[0],))}'?" if close else ""
            lines.append(f"  - {dotted}: unknown key{hint} (known: {', '.join(known)})")
        elif e["type"] == "missing":
            lines.append(f"  - {dotted}: required field is missing")
        else:
            lines.append(f"  - {dotted}: {e['msg']} (found {e.get('input')!r})")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` into (["a","b","c"], value), the value read as YAML (1e-4, true, [a, b])."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-4" as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{key}' is not a section")
        node[path[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply `key=value` overrides and validate it.

    Raises:
        ConfigError: missing file, bad YAML, unknown key (with did-you-mean) or wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(_config_text(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (data, model, ...)")
    raw.pop("_meta", None)   # what tunelab adds to a run folder's config.yaml (version, git sha)
    raw = apply_overrides(raw, overrides or [])
    raw.setdefault("base_dir", str(path.resolve().parent))
    return config_from_dict(raw, source=str(path))


def _config_text(path: Path) -> str:
    """The config file's text; anything but UTF-8 is refused with the place of the first bad byte."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: the config is UTF-16 (it starts with a UTF-16 byte-order mark); "
                          "re-save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{path}:{line}: the config is not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                          f"{column}); re-save it as UTF-8") from None


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """What changed between two nested dicts, one line per dotted key: `train.lr changed (0.001 -> 0.002)`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(new) + [k for k in old if k not in new]:
            out += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [f"{prefix} changed ({old!r} -> {new!r})"]


def config_from_dict(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def dump_config(cfg: Config) -> dict:
    return cfg.model_dump(mode="json", by_alias=True)


def json_schema() -> dict:
    return Config.model_json_schema(by_alias=True)
