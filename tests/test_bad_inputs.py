"""The bad-input corpus: every case of issue 10, through the CLI, with its exit code and message.

Each case builds its inputs in its own folder and returns the CLI arguments. `test_case` runs it
in-process and asserts the exit code, the message and what must (not) be left in the run folder;
for data, that `read = kept + sum(dropped) + sum(moved)` still balances, whether the data was
accepted (the manifest) or refused (the DataError's accounting). `test_no_traceback` runs every case
again in one real `python` process, as a user's shell would, and asserts no output holds a traceback.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml
from transformers import AutoTokenizer
from typer.testing import CliRunner, Result

from data.conftest import make_pdf
from test_pipeline import INTENTS, tiny_project
from tunelab.cli import app
from tunelab.config import load_config
from tunelab.core.log import rate
from tunelab.core.rundir import RunDir, is_complete_model
from tunelab.data import prepare
from tunelab.data.problems import DataError
from tunelab.models import load_tokenizer
from tunelab.pipeline import run as run_pipeline


@dataclass
class Ctx:
    """What a case builds on: the shared project (data, tiny model, a trained and evaluated run) and its own folder."""
    root: Path
    base: RunDir
    folder: Path = None

    def config(self, name: str, **over) -> Path:
        """A config file for the project's data and model with dotted overrides; relative data paths
        resolve against the case folder."""
        raw = yaml.safe_load((self.root / "cfg.yaml").read_text())
        raw["name"], raw["runs_dir"] = name, str(self.folder / "runs")
        for key, value in over.items():
            node = raw
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        for split in ("train", "test"):
            if raw["data"].get(split) and not (self.folder / raw["data"][split]).exists():
                raw["data"][split] = str(self.root / raw["data"][split])
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def copy_of_base(self, name: str = "copy") -> RunDir:
        dst = self.folder / "runs" / name
        shutil.copytree(self.base.path, dst)
        return RunDir(dst)

    def csv(self, name: str, header: list[str], rows: list[list]) -> str:
        with (self.folder / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return name


def labelled(n: int, labels=("card", "transfer", "pin", "fee"), about: str = "customer message") -> list[list[str]]:
    return [[f"{about} number {i} about {labels[i % len(labels)]}", labels[i % len(labels)]] for i in range(n)]


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], list]     # makes the inputs, returns the CLI arguments
    code: int
    says: list[str]                  # substrings the output must contain
    data: bool = False               # also check the data accounting (validate cases)
    after: Callable[[Ctx, str], None] | None = None   # further checks of what was (not) left behind
    not_says: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the cases


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _killed_during_training(ctx: Ctx) -> RunDir:
    """A run folder as `kill -9` during training leaves it: status `running` for a process that is gone,
    train stage running, no last/ (tests/test_resume.py kills a real training process)."""
    rd = ctx.copy_of_base("killed")
    st = rd.status()
    st.update(status="running", stage="train", pid=_dead_pid())
    st["stages"] = {"prepare": st["stages"]["prepare"], "train": {"status": "running", "pid": st["pid"]}}
    rd.status_path.write_text(json.dumps(st))
    shutil.rmtree(rd.last)
    return rd


def _u16(ctx: Ctx, name: str, rows, bom: bool = True) -> str:
    text = "text,category\n" + "".join(f"{t},{label}\n" for t, label in rows)
    (ctx.folder / name).write_bytes(text.encode("utf-16" if bom else "utf-16-le"))
    return name


def _corrupt_pdf(ctx: Ctx) -> str:
    good = make_pdf(ctx.folder / "good.pdf", ["A page about cards. " * 20, "A page about transfers. " * 20],
                    "Bank", "page {page}")
    raw = bytearray(good.read_bytes())
    start = 0
    while (i := raw.find(b">>\nstream\n", start)) >= 0:   # overwrite the start of every compressed stream
        raw[i + 12:i + 40] = b"A" * 28
        start = i + 40
    (ctx.folder / "doc.pdf").write_bytes(bytes(raw))
    return "doc.pdf"


def _check_config_unchanged(ctx: Ctx, out: str) -> None:
    assert yaml.safe_load((ctx.base.path / "config.yaml").read_text())["method"]["r"] == \
        yaml.safe_load((ctx.folder / "runs" / "copy" / "config.yaml").read_text())["method"]["r"]


def _check_eval_other_data(ctx: Ctx, out: str) -> None:
    rd = RunDir(ctx.folder / "runs" / "copy")
    test = rd.metrics()["test"]
    assert test["finetuned_full_test"]["n"] == 6, test["finetuned_full_test"]   # the new file's 6 rows
    assert not rd.export_dir.exists(), "a stale export/ of the earlier evaluation was left"


def _check_overwritten(ctx: Ctx, out: str) -> None:
    rd = RunDir(ctx.folder / "runs" / "copy")
    assert not rd.report_html.exists() and not rd.predictions_path.exists() and "test" not in rd.metrics()
    assert not rd.loss_plot.exists() or rd.loss_plot.stat().st_mtime >= rd.config_path.stat().st_mtime
    assert rd.state() == "complete" and rd.stage_state("evaluate") is None
    for part in (rd.best, rd.last):   # whole model folders: tokenizer files beside the weights, and they load
        assert is_complete_model(part) and (part / "tokenizer.json").is_file(), sorted(p.name for p in part.iterdir())
        assert AutoTokenizer.from_pretrained(part)("card").input_ids


def _check_export_gone(ctx: Ctx, out: str) -> None:
    rd = RunDir(ctx.folder / "runs" / "copy")
    assert not rd.export_dir.exists(), "the export of the replaced model was left beside the new one"
    assert rd.state() == "complete" and is_complete_model(rd.best)


def _check_dropped_list(ctx: Ctx, out: str) -> None:
    rd = RunDir(ctx.folder / "runs" / "x")
    rows = rd.data.dropped()
    assert sorted(r["reason"] for r in rows) == ["empty_text", "exact_duplicate", "exact_duplicate"], rows
    assert str(rd.data.dropped_path) in out


# Builders of the cases that need more than a config: each makes its inputs and returns the CLI arguments.

def _same_name(c: Ctx) -> list:
    c.copy_of_base()
    return ["run", c.config("copy")]


def _train_overwrite(c: Ctx) -> list:
    c.copy_of_base()
    return ["train", c.config("copy"), "--overwrite"]


def _rerun_with_export(c: Ctx) -> list:
    rd = c.copy_of_base()
    assert CliRunner().invoke(app, ["export", str(rd.path)]).exit_code == 0 and rd.export_dir.is_dir()
    return ["train", c.config("copy"), "--overwrite"]


def _prepare_trained(c: Ctx) -> list:
    c.copy_of_base()
    return ["prepare", c.config("copy"), "method.r=32"]


def _eval_other_data(c: Ctx) -> list:
    rd = c.copy_of_base()
    assert CliRunner().invoke(app, ["export", str(rd.path)]).exit_code == 0
    rows = [[f"please help: {t} now", label] for label, texts in INTENTS.items() for t in texts[:2]]
    return ["eval", rd.path, "--data", c.folder / c.csv("other_test.csv", ["text", "category"], rows)]


def _best_without_marker(c: Ctx) -> list:
    rd = c.copy_of_base()
    (rd.best / ".tunelab-complete").unlink()
    return ["eval", rd.path]


def _rerun_after_kill(c: Ctx) -> list:
    _killed_during_training(c)
    return ["train", c.config("killed")]


def _duplicate_key(c: Ctx, only_row: int | None = None, skip: bool = False) -> list:
    lines = []
    for i, (t, lab) in enumerate(labelled(40)):
        row = json.dumps({"text": t, "category": lab})
        lines.append(row[:-1] + ', "text": "x"}' if only_row in (None, i) else row)
    (c.folder / "dup.jsonl").write_text("\n".join(lines) + "\n")
    return ["validate", c.config("x", **{"data.train": "dup.jsonl", "data.errors": "skip" if skip else "fail"})]


def _non_strings(c: Ctx) -> list:
    rows = [{"text": {"x": i} if i == 0 else t, "category": i % 4} for i, (t, _) in enumerate(labelled(40))]
    (c.folder / "ns.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["validate", c.config("x", **{"data.train": "ns.jsonl", "data.test": None})]


def _latin1_config(c: Ctx) -> list:
    (c.folder / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    return ["validate", c.folder / "latin.yaml"]


def _prepared_only(c: Ctx) -> list:
    assert CliRunner().invoke(app, ["prepare", str(c.config("prep"))]).exit_code == 0
    return ["eval", c.folder / "runs" / "prep"]


def _no_tokenizer(c: Ctx) -> list:
    shutil.copytree(c.root / "tiny-llama", c.folder / "notok",
                    ignore=lambda d, names: [n for n in names if n.startswith("tokenizer")])
    return ["validate", c.config("x", **{"model.name": str(c.folder / "notok")})]


def _not_gguf(c: Ctx) -> list:
    (c.folder / "x.gguf").write_text("not a model")
    return ["validate", c.config("x", **{"model.name": str(c.folder / "x.gguf")})]


def _json_array(c: Ctx) -> list:
    (c.folder / "arr.jsonl").write_text(json.dumps([{"text": t, "category": lab} for t, lab in labelled(40)], indent=1))
    return ["validate", c.config("x", **{"data.train": "arr.jsonl"})]


def _damaged_pdf(c: Ctx) -> list:
    docs = {"task": "pretrain", "data.train": _corrupt_pdf(c), "data.test": None, "data.input_columns": [],
            "data.output_column": None, "data.template": None}
    return ["validate", c.config("x", **docs)]


def _folder_without_inputs(c: Ctx) -> list:
    (c.folder / "docs").mkdir()
    (c.folder / "docs" / "a.xyz").write_text("x")
    return ["validate", c.config("x", **{"data.train": "docs"})]


def _u16_train(c: Ctx, test: bool = False, bom: bool = True, **over) -> list:
    files = {"data.train": _u16(c, "u16.csv", labelled(40), bom)}
    if test:
        files["data.test"] = c.csv("t8.csv", ["text", "category"], labelled(8, about="held-out question"))
    return ["validate", c.config("x", **files, **over)]


def _validate_csv(name: str, rows: list, **over) -> Callable[[Ctx], list]:
    return lambda c: ["validate", c.config("x", **{"data.train": c.csv(name, ["text", "category"], rows), **over})]


CASES = [
    # 1. run names
    Case("name_empty", lambda c: ["validate", c.config("x"), "name="], 2, ["run name '' must be a plain folder name"]),
    Case("name_dotdot", lambda c: ["validate", c.config("x"), "name=../x"], 2,
         ["run name '../x' must be a plain folder name"]),
    Case("name_absolute", lambda c: ["validate", c.config("x"), "name=/tmp/x"], 2,
         ["run name '/tmp/x' must be a plain folder name"]),
    # 2. a second run never replaces the first silently; derived files never outlive their model
    Case("same_name_refused", _same_name, 2,
         ["already holds a run (complete", "add --overwrite to replace it, --resume to continue it"]),
    Case("train_overwrite_drops_old_report", _train_overwrite, 0,
         ["--overwrite: removing the earlier run in", "trained"], after=_check_overwritten),
    Case("rerun_drops_old_export", _rerun_with_export, 0, ["--overwrite: removing the earlier run in", "trained"],
         after=_check_export_gone),
    Case("prepare_keeps_trained_config", _prepare_trained, 2, ["already holds a run"], after=_check_config_unchanged),
    Case("eval_other_data_replaces_results", _eval_other_data, 0,
         ["removed the earlier", "export/", "fine-tuned, full test set"],
         after=_check_eval_other_data),
    # 3. an interrupted run is never used as if it were whole
    Case("eval_after_kill", lambda c: ["eval", _killed_during_training(c).path], 2,
         ["its training was interrupted before it finished", "--resume"]),
    Case("export_after_kill", lambda c: ["export", _killed_during_training(c).path], 2,
         ["its training was interrupted before it finished"]),
    Case("serve_after_kill", lambda c: ["serve", _killed_during_training(c).path], 2,
         ["cannot serve it", "its training was interrupted before it finished"]),
    Case("best_without_marker", _best_without_marker, 2, ["its best/ model folder is missing or incomplete"]),
    Case("rerun_after_kill_offers_resume", _rerun_after_kill, 2,
         ["already holds a run (interrupted", "--resume to continue it"]),
    # 4. repeated names
    Case("csv_repeated_column", lambda c: ["validate", c.config("x", **{"data.train": c.csv(
        "rep.csv", ["text", "category", "text"], [r + [f"other {i}"] for i, r in enumerate(labelled(40))])})], 2,
         ["rep.csv:1 [text]: duplicate_column", "'text' as columns 1, 3 of 3"], data=True),
    Case("json_duplicate_key", _duplicate_key, 2, ["dup.jsonl:1 [text]: duplicate_key", "'text' twice"], data=True),
    Case("json_duplicate_key_skipped", lambda c: _duplicate_key(c, only_row=3, skip=True), 0,
         ["1 row(s) dropped (1 duplicate_key)", "dropped dup.jsonl:4 (train): duplicate_key"],
         not_says=[f"{tempfile.gettempdir()}/tmp"], data=True),   # no file in validate's scratch folder
    # 5. non-string values; labels that would switch a closed set to open-ended generation
    Case("non_string_values", _non_strings, 0,
         ["converted 41 non-string value(s) to text (40 in category, 1 in text)", "ns.jsonl:1 object"], data=True),
    Case("odd_labels", _validate_csv("odd.csv", labelled(40) + [["an odd one", "zzz"], ["another odd one", "yyy"]]), 2,
         ["odd.csv:42 [output]: rare_label", "found 'zzz' once", "eval.constrained: off"], data=True),
    # 6. degenerate data
    Case("three_rows_no_test", _validate_csv("three.csv", labelled(3, ("a", "b")), **{"data.test": None}), 2,
         ["empty_split: expected at least 1 test example", "carved 10% of 3 training example(s)", "0 example(s)"],
         data=True),
    Case("single_class", _validate_csv("one.csv", labelled(30, ("card",)), **{"data.test": None}), 2,
         ["single_label: expected at least 2 different labels in train, found only 'card'"], data=True),
    Case("empty_test_after_cleaning", lambda c: ["validate", c.config("x", **{
        "data.train": c.csv("tr.csv", ["text", "category"], labelled(40)),
        "data.test": c.csv("te.csv", ["text", "category"], [["", "card"], ["  ", "pin"]])})], 2,
         ["empty_split: expected at least 1 test example", "none left of 2 read (2 empty_text)"], data=True),
    # tracebacks before this issue
    Case("csv_field_over_131072", _validate_csv("big.csv", [["long " * 30000, "card"]] + labelled(40)), 0,
         ["config and data OK"], data=True),
    Case("config_not_utf8", _latin1_config, 2, ["latin.yaml:1: the config is not UTF-8 text (byte 0xe9 at column 10)"]),
    Case("eval_not_a_run", lambda c: ["eval", c.folder], 2, ["is not a tunelab run folder"]),
    Case("export_not_a_run", lambda c: ["export", c.folder], 2, ["is not a tunelab run folder"]),
    Case("report_not_a_run", lambda c: ["report", c.folder], 2, ["is not a tunelab run folder"]),
    Case("eval_prepared_only", _prepared_only, 2, ["it has not been trained (only prepare)"]),
    Case("read_only_run", lambda c: ["report", c.copy_of_base().path], 2, ["is not writable", "fix its permissions"]),
    Case("model_without_tokenizer", _no_tokenizer, 2, ["has no tokenizer files", "copy them from the base model"]),
    Case("gguf_not_gguf", _not_gguf, 2, ["x.gguf is not a GGUF file (it starts with b'not '"]),
    Case("epochs_inf", lambda c: ["validate", c.config("x"), "train.epochs=inf"], 2,
         ["train.epochs: Value error, must be a finite number of passes above 0 or 'auto' (found 'inf')"]),
    Case("embedded_typo", lambda c: ["validate", c.config("x", **{"model.name": "smollm2-135m-instrct"})], 2,
         ["did you mean 'smollm2-135m-instruct'?"]),
    # misleading messages before this issue
    Case("utf16_with_bom", _u16_train, 0, ["u16.csv: read as utf-16 (UTF-16 byte-order mark)", "config and data OK"],
         data=True),
    Case("utf16_without_bom", lambda c: _u16_train(c, bom=False), 2,
         ["u16.csv: utf16_without_bom", "set data.encoding: utf-16-le"], not_says=["\x00"], data=True),
    Case("utf16_train_utf8_test", lambda c: _u16_train(c, test=True), 0, ["config and data OK"], data=True),
    Case("utf16_setting_on_utf8_test", lambda c: _u16_train(c, test=True, **{"data.encoding": "utf-16"}), 2,
         ["t8.csv: wrong_encoding", "(it reads as UTF-8)", "data.encoding: {train: utf-16, test: utf-8}"], data=True),
    Case("per_split_encoding", lambda c: _u16_train(c, test=True, bom=False,
                                                    **{"data.encoding": {"train": "utf-16-le", "test": "utf-8"}}),
         0, ["config and data OK"], data=True),
    Case("json_array_in_jsonl", _json_array, 2,
         ["1 problem(s) (1 json_array_in_jsonl)", "rename the file to .json or set data.format: json"], data=True),
    Case("pdf_corrupt_stream", _damaged_pdf, 2, ["doc.pdf: damaged_pdf", "2 of 2 page(s) with a damaged content stream"],
         not_says=["scanned"], data=True),
    Case("folder_without_supported_files", _folder_without_inputs, 2,
         ["no_supported_files", "a folder without supported files (1 other file(s): a.xyz)"], data=True),
    Case("dropped_rows_counted", _validate_csv("dd.csv", labelled(40) + labelled(2) + [["", "card"]]), 0,
         ["3 row(s) dropped (2 exact_duplicate, 1 empty_text)", "dropped dd.csv:44 (train): empty_text",
          "writes the full list to"], not_says=[f"{tempfile.gettempdir()}/tmp"], data=True),
    Case("prepare_dropped_rows_counted", lambda c: ["prepare", c.config("x", **{"data.train": c.csv(
        "dd.csv", ["text", "category"], labelled(40) + labelled(2) + [["", "card"]])})], 0,
         ["3 row(s) dropped (2 exact_duplicate, 1 empty_text), each with its file, line and reason, in"],
         data=True, after=_check_dropped_list),
    # 7. data as other authors ship it: a computed column whose path a record lacks
    Case("fields_bad_path", _validate_csv("fp.csv", labelled(40), **{"data.fields": {"label2": "{category}_{nope}"}}),
         2, ["fp.csv:2 [data.fields.label2]: bad_field_path", "without 'nope' (keys: text, category)"], data=True),
    Case("fields_bad_template", _validate_csv("ft.csv", labelled(40), **{"data.fields": {"label2": "category"}}),
         2, ["fields.label2", "needs {path} placeholders"]),
]


# ---------------------------------------------------------------- fixtures and helpers


def make_project(root: Path) -> Ctx:
    """The tiny project and one run of it trained and evaluated (2 per class on test, few steps)."""
    tiny_project(root, "base", method={"r": 2, "alpha": 4}, train={"max_steps": 2, "eval_every": 2},
                 eval={"baseline_per_class": 1, "few_shot_k": 1, "bootstrap_samples": 100, "forgetting": False})
    return Ctx(root, run_pipeline(load_config(root / "cfg.yaml")))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Ctx:
    return make_project(tmp_path_factory.mktemp("corpus"))


def _case_ctx(project: Ctx, tmp: Path) -> Ctx:
    tmp.mkdir(parents=True, exist_ok=True)
    return Ctx(project.root, project.base, tmp)


@contextmanager
def read_only(folder: Path):
    """Make `folder` refuse new entries: permission bits for a normal user, the immutable flag for root
    (which permission bits do not stop)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("root without chattr: cannot make a folder read-only here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)


def _balanced(ctx: Ctx, args: list) -> None:
    """The data accounting balances for the config a validate case used, accepted or refused."""
    cfg = load_config(args[1], [a for a in args[2:] if "=" in str(a)])
    try:
        accounting = prepare(cfg, ctx.folder / "prepared", load_tokenizer(cfg.model)).manifest["accounting"]
    except DataError as e:
        accounting = e.accounting
    for split, a in accounting.items():
        assert a["read"] == a["kept"] + sum(a["dropped"].values()) + sum(a["moved"].values()), (split, a)
        assert a["balanced"], (split, a)


# ---------------------------------------------------------------- tests


def invoke(case: Case, ctx: Ctx) -> tuple[list[str], Result]:
    """Build the case's inputs in `ctx.folder` and run its CLI command in-process; (arguments, result)."""
    args = [str(a) for a in case.build(ctx)]
    guard = read_only(ctx.folder / "runs" / "copy") if case.id == "read_only_run" else _nothing()
    with guard:
        return args, CliRunner().invoke(app, args)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, project: Ctx, tmp_path):
    ctx = _case_ctx(project, tmp_path)
    args, result = invoke(case, ctx)
    out = result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == case.code, out
    for text in case.says:
        assert text in out, f"{text!r} not in:\n{out}"
    for text in case.not_says:
        assert text not in out, f"{text!r} in:\n{out}"
    if case.data:
        _balanced(ctx, args)
    if case.after:
        case.after(ctx, out)


@contextmanager
def _nothing():
    yield


SWEEP = textwrap.dedent("""
    import json, sys, traceback
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO
    from tunelab.cli import app

    results = []
    for args in json.load(open(sys.argv[1])):
        out = StringIO()
        with redirect_stdout(out), redirect_stderr(out):
            try:
                app(args, prog_name="tunelab")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()   # what the interpreter would print for an escaped exception
                code = 1
        results.append({"args": args, "code": code, "output": out.getvalue()})
    json.dump(results, open(sys.argv[2], "w"))
""")


def test_no_traceback(project: Ctx, tmp_path):
    """Every case again, in one real process (what a shell user runs): no output holds a traceback."""
    cases, arglists = [], []
    for case in CASES:
        ctx = _case_ctx(project, tmp_path / case.id)
        cases.append((case, ctx))
        arglists.append([str(a) for a in case.build(ctx)])
    (tmp_path / "cases.json").write_text(json.dumps(arglists))
    read_only_ctx = next(ctx for case, ctx in cases if case.id == "read_only_run")
    env = {**os.environ, "TUNELAB_PROGRESS": "0"}
    with read_only(read_only_ctx.folder / "runs" / "copy"):
        done = subprocess.run([sys.executable, "-c", SWEEP, str(tmp_path / "cases.json"), str(tmp_path / "out.json")],
                              env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    for (case, _), res in zip(cases, results):
        assert "Traceback" not in res["output"], f"{case.id}:\n{res['output']}"
        assert res["code"] == case.code, f"{case.id}: exit {res['code']}\n{res['output'][-2000:]}"
    assert "Traceback" not in done.stdout + done.stderr


def test_rates_of_tiny_timings_are_not_printed():
    """A tiny evaluation measured in microseconds printed '6000000000.0/s'; no rate below 50 ms."""
    assert rate(12, 0.000002, "examples") == ""
    assert rate(12, 0.5, "examples") == " (24.0 examples/s)"


def test_evaluation_log_has_no_absurd_rate(project: Ctx, tmp_path):
    ctx = _case_ctx(project, tmp_path)
    result = CliRunner().invoke(app, ["eval", str(ctx.copy_of_base().path)])
    assert result.exit_code == 0, result.output
    found = re.findall(r"evaluated \w+ on \d+ test examples in ([\d.]+)s(?: \(([\d.]+) examples/s\))?", result.output)
    assert len(found) == 3, result.output
    for seconds, per_second in found:
        # a rate only from a time long enough to measure (rate() needs 50 ms; the time is printed rounded)
        assert not per_second or (float(seconds) >= 0.04 and float(per_second) <= 12 / 0.05), (seconds, per_second)
