"""The New-run form: fields generated from the config's JSON schema, a YAML box for anything else, data uploads,
Validate (the `tunelab validate` verb: every data problem with file:line) and Start (a job of the queue).

The form shows each scalar field of the run's sections (data, model, method, train, eval) with its
default and its one-line description from the schema; a field left at its default is not written, so
the config the run records is the same one a person would have written by hand.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import config_from_dict, dump_config, json_schema, parse_override
from tunelab.core.errors import UserError
from tunelab.core.rundir import DashboardDir, RunDir, atomic_write_text

SECTIONS = ("data", "model", "method", "train", "eval")
TOP_LEVEL = ("name", "task")
UPLOADS = ("train", "validation", "test")      # data.<split> may come from an uploaded file
VALIDATE_TIMEOUT_S = 600
CHUNK = 1 << 20


class FormError(UserError):
    """A New-run form that cannot become a run (bad YAML, an upload over the limit, a name in use)."""


@dataclass
class FormField:
    key: str                  # dotted config key, e.g. train.lr
    kind: str                 # select, checkbox, number, list, text
    default: str              # as shown in the input
    description: str
    options: tuple[str, ...] = ()
    required: bool = False
    nullable: bool = False


def _shape(prop: dict) -> tuple[dict, bool, tuple[str, ...]]:
    """The main alternative of a property, whether null is allowed, and the constants it also accepts
    (`target_modules`: a list of names, or the constant `all-linear`)."""
    alts = prop.get("anyOf")
    if not alts:
        return prop, False, ()
    real = [a for a in alts if a.get("type") != "null"]
    consts = tuple(str(a["const"]) for a in real if "const" in a)
    main = [a for a in real if "const" not in a]
    return (main[0] if len(main) == 1 else {"type": "string"}), len(real) < len(alts), consts


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _field(key: str, prop: dict, required: bool) -> FormField | None:
    shape, nullable, consts = _shape(prop)
    if shape.get("$ref") or shape.get("type") == "object":
        return None   # nested sections (data.dedup): the YAML box
    kind = ("select" if "enum" in shape else "checkbox" if shape.get("type") == "boolean"
            else "number" if shape.get("type") in ("integer", "number") else "list" if shape.get("type") == "array"
            else "text")
    return FormField(key, kind, _show(prop.get("default")), prop.get("description", ""),
                     tuple(str(o) for o in shape.get("enum", ())) + consts, required, nullable)


def form_fields() -> dict[str, list[FormField]]:
    """The form's fields by section ("" for the top level), generated from `tunelab schema`."""
    schema = json_schema()
    defs = schema.get("$defs", {})
    out: dict[str, list[FormField]] = {"": []}
    for key in TOP_LEVEL:
        out[""].append(_field(key, schema["properties"][key], key in schema.get("required", ())))
    for section in SECTIONS:
        ref = schema["properties"][section].get("$ref") or schema["properties"][section]["anyOf"][0]["$ref"]
        body = defs[ref.rsplit("/", 1)[-1]]
        fields = [_field(f"{section}.{k}", p, k in body.get("required", ())) for k, p in body["properties"].items()]
        out[section] = [f for f in fields if f is not None]
    return out


def _value(f: FormField, given: str) -> Any:
    """The config value a submitted input means (typed by the field's kind)."""
    given = given.strip()
    if f.nullable and given == "":
        return None
    if f.kind == "checkbox":
        return given == "true"
    if f.kind == "list":
        return given if given in f.options else [v.strip() for v in given.split(",") if v.strip()]
    if f.kind == "number":
        return parse_override(f"x={given}")[1]
    return given


def _put(raw: dict, key: str, value: Any) -> None:
    node = raw
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise FormError(f"the YAML box sets {p} to a value, but the form has fields inside {p}")
    node[last] = value


def raw_config(form: dict[str, str], runs_dir: Path) -> dict:
    """The config dict the form describes: the YAML box, then every field that differs from its default."""
    text = form.get("yaml", "") or ""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise FormError(f"YAML box{f' line {mark.line + 1}' if mark else ''}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise FormError("the YAML box must hold a mapping of sections (data:, train:, ...)")
    for fields in form_fields().values():
        for f in fields:
            given = form.get(f.key)
            if f.kind == "checkbox":
                given = "true" if form.get(f.key) == "true" else "false"
            if given is None or given.strip() == f.default:
                continue
            _put(raw, f.key, _value(f, given))
    raw["runs_dir"] = str(runs_dir)
    return raw


def save_upload(dirs: DashboardDir, upload, limit: int) -> Path:
    """Copy an uploaded data file into `<runs>/_ui/uploads/<random>/<its name>`, refusing more than `limit` bytes."""
    name = Path(upload.filename or "data").name
    if not name or name.startswith("."):
        raise FormError(f"upload {upload.filename!r}: give the file a plain name")
    folder = dirs.uploads / secrets.token_hex(8)
    folder.mkdir(parents=True)
    target, size = folder / name, 0
    with target.open("wb") as out:
        while chunk := upload.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                out.close()
                target.unlink()
                folder.rmdir()
                raise FormError(f"upload {name}: larger than the dashboard accepts ({limit:,} bytes; "
                                "tunelab ui --max-upload-mb)")
            out.write(chunk)
    return target


def build(form: dict[str, str], uploads: dict[str, Any], dirs: DashboardDir, runs_dir: Path, limit: int) -> dict:
    """Validate the form as a config (uploads saved and set as data files); returns the config as written."""
    raw = raw_config(form, runs_dir)
    for split, upload in uploads.items():
        _put(raw, f"data.{split}", str(save_upload(dirs, upload, limit)))
    raw.setdefault("base_dir", str(runs_dir))
    cfg = config_from_dict(raw, source="the New-run form")
    if cfg.model.trust_remote_code:
        # An upload could carry a model folder's code: from the browser, nobody may run code on the server.
        raise FormError("model.trust_remote_code is refused from the dashboard (it runs code from the model "
                        "folder); start such a run with `tunelab run` on the server")
    return dump_config(cfg)


def write(dirs: DashboardDir, config: dict, temporary: bool = False) -> Path:
    """Write the config the job runs (or a scratch copy for Validate) under `<runs>/_ui/configs/`."""
    name = config["name"]
    path = dirs.configs / f".validate-{secrets.token_hex(6)}.yaml" if temporary else dirs.config_path(name)
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def check_free(runs_dir: Path, name: str) -> None:
    """Refuse a name whose run folder already holds a run (a new run never replaces another)."""
    rd = RunDir(Path(runs_dir) / name)
    if rd.path.exists() and any(rd.path.iterdir()):
        raise FormError(f"a run named {name} already exists in {runs_dir}: choose another name (e.g. {name}-2)")


def validate(config_path: Path) -> tuple[bool, str]:
    """`tunelab validate CONFIG` in a child process: (ok, its output: every problem with file:line)."""
    try:
        out = subprocess.run([sys.executable, "-m", "tunelab.cli", "validate", str(config_path)], capture_output=True,
                             text=True, timeout=VALIDATE_TIMEOUT_S, env={**os.environ, "TUNELAB_PROGRESS": "0"})
    except subprocess.TimeoutExpired:
        return False, f"validation did not finish within {VALIDATE_TIMEOUT_S}s"
    finally:
        config_path.unlink(missing_ok=True)
    return out.returncode == 0, (out.stdout + out.stderr).strip()

