"""The `prepare` stage: ingest -> validate -> clean -> dedup -> split -> leakage check -> label checks
-> (chunk) -> token statistics -> the run's `data/` folder (splits, manifest, data report, dropped
rows; file names in core/rundir.py). A re-run with unchanged inputs reuses the result (cache.py)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunelab.config import Config
from tunelab.core.log import progress
from tunelab.core.records import prompt_text
from tunelab.core.rundir import DERIVED, SPLITS, DataDir, RunDir
from tunelab.data import cache, chunk, clean, dedup, leakage, split, stats, validate
from tunelab.data.ingest import ingest
from tunelab.data.problems import Problems
from tunelab.data.report import render_report
from tunelab.data.schema import Decision, decide, make_record, with_references
from tunelab.tasks import TASKS

log = logging.getLogger(__name__)
MAX_FINDINGS = 50  # clusters, leaks and conflicts listed in the manifest (all are counted)


@dataclass
class Prepared:
    """The prepared splits (records in the ARCHITECTURE.md format), the closed label set or None,
    the manifest, and whether a cached result was reused."""

    splits: dict[str, list[dict]]
    labels: list[str] | None
    manifest: dict
    reused: bool
    seconds: float = 0.0   # wall time this process spent building them (0 when reused): not training's set-up


@dataclass
class _Ledger:
    """Per-split accounting: read = kept + sum(dropped by reason) + sum(moved to other splits)."""

    read: Counter = field(default_factory=Counter)
    dropped: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    moved: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    rows: list[dict] = field(default_factory=list)

    def drop(self, split_name: str, rec: dict, reason: str) -> None:
        self.dropped[split_name][reason] += 1
        text = rec.get("raw") if "raw" in rec else prompt_text(rec)
        self.rows.append({"split": split_name, "reason": reason, "id": rec["id"], "source": rec["source"],
                          "text": str(text)[:300]})

    def drop_all(self, split_name: str, pairs: list[tuple[dict, str]]) -> None:
        for rec, reason in pairs:
            self.drop(split_name, rec, reason)

    def summary(self, splits: dict[str, list[dict]]) -> dict:
        out = {}
        for s in SPLITS:
            kept, dropped, moved = len(splits[s]), dict(self.dropped[s]), dict(self.moved[s])
            out[s] = {"read": self.read[s], "kept": kept, "dropped": dropped, "moved": moved,
                      "balanced": self.read[s] == kept + sum(dropped.values()) + sum(moved.values())}
        return out


def prepare(cfg: Config, data: DataDir | Path, tokenizer=None, scratch: bool = False) -> Prepared:
    """Prepare (or reuse) the splits for `cfg` in the prepared-data folder `data`; `scratch`: `data` is a
    temporary folder (validate, estimate), so the log names no file in it (it is gone when the user looks).

    Raises:
        DataError: unreadable or invalid data (every problem listed), or leakage under `leakage: refuse`.
    """
    data = data if isinstance(data, DataDir) else DataDir(Path(data))
    parts = cache.fingerprint_parts(cfg, tokenizer)
    fp = cache.fingerprint(parts)
    why = cache.why_rebuild(data, parts)
    if why is None:
        log.info(f"reusing prepared data (fingerprint {fp}) in {data.path}")
        return load_prepared(data, reused=True)
    if not scratch:
        log.info(f"rebuilding: {why}")
    started = time.perf_counter()
    splits, manifest = _build(cfg, tokenizer)
    manifest = {"fingerprint": fp, "fingerprint_parts": parts, **manifest}
    dropped = manifest.pop("dropped_rows")
    data.write(splits, manifest, dropped, render_report(manifest))
    kept = ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
    where = "" if scratch else f" -> {data.path}"
    listed = "" if scratch else f", each with its file, line and reason, in {data.dropped_path}"
    log.info(f"prepared {kept}{where}; {dropped_summary(manifest)}{listed}")
    return Prepared(splits, manifest["labels"], manifest, False, time.perf_counter() - started)


def dropped_summary(manifest: dict) -> str:
    """`12 row(s) dropped (10 exact_duplicate, 2 empty_text)` from a manifest's accounting."""
    reasons: Counter = Counter()
    for a in manifest.get("accounting", {}).values():
        reasons.update(a["dropped"])
    detail = f" ({', '.join(f'{n} {why}' for why, n in reasons.most_common())})" if reasons else ""
    return f"{sum(reasons.values())} row(s) dropped{detail}"


def load_prepared(data: DataDir, reused: bool = True) -> Prepared:
    """The prepared splits, labels and manifest of a prepared-data folder."""
    manifest = data.manifest()
    return Prepared(data.splits(), manifest.get("labels"), manifest, reused)


def run(cfg: Config, rd: RunDir, tokenizer=None) -> Prepared:
    """The prepare stage of run folder `rd`: prepare its data (or reuse it) and record the stage."""
    from tunelab.models import load_tokenizer  # lazy: model loading pulls in transformers

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    parts = cache.fingerprint_parts(cfg, tokenizer)
    if cache.why_rebuild(rd.data, parts) is None and rd.stage_state("prepare") == "complete":
        log.info(f"reusing prepared data (fingerprint {cache.fingerprint(parts)}) in {rd.data.path}")
        return load_prepared(rd.data)
    # A trained run re-prepared for another test file (`tunelab eval RUN --data FILE`) keeps its model:
    # only what was derived from the old splits it trained on is removed.
    trained_on = {s: rd.data.splits()[s] for s in ("train", "validation")} if rd.stage_state("train") else None
    # A data/ folder that already holds this fingerprint's result (e.g. copied from a tuning study's
    # shared preparation) is kept and reused by `prepare`; anything else is removed first.
    with rd.stage("prepare", derived=(), fresh=cache.why_rebuild(rd.data, parts) is not None):
        prepared = prepare(cfg, rd.data, tokenizer)
    same = trained_on is not None and all(trained_on[s] == prepared.splits[s] for s in trained_on)
    rd.invalidate(DERIVED["train"] if same else DERIVED["prepare"])
    return prepared


# ---------------------------------------------------------------- the steps


def _build(cfg: Config, tokenizer) -> tuple[dict[str, list[dict]], dict]:
    """Run every step on freshly read data; returns the splits and the manifest (without fingerprint)."""
    d, problems, ledger = cfg.data, Problems(), _Ledger()
    bar = progress(total=7, desc="prepare data", unit="step")
    step = lambda name: (bar.set_postfix_str(name, refresh=False), bar.update())  # noqa: E731
    for op in [op for op in d.clean if op not in clean.OPS]:
        problems.add("unknown_clean_op", "config", None, "data.clean", expected=f"one of {', '.join(clean.OPS)}",
                     found=repr(op))
    recs, decision, files = _read(cfg, problems, ledger)
    _report_conversions(problems)
    step("read")
    if decision is None and not problems.errors:
        problems.add("no_records", d.train, expected="at least one readable record", found="none")
    problems.raise_if_errors("cannot prepare the data", ledger.summary(recs))
    ops_report = _clean(cfg, recs, decision, problems, ledger)
    step("clean")
    # Different completions for one prompt are normal in open-ended SFT; only labels can conflict.
    closed = _closed_labels(recs["train"], cfg.eval.max_labels) is not None
    conflicts = validate.conflicts(recs["train"], problems) if closed else []
    if conflicts:
        log.info(f"conflicting labels: {len(conflicts)} text(s) in train carry two or more different outputs")
    # Supplied held-out files are checked before dedup and carving, so a leaked example can neither
    # hide behind a near-duplicate kept in its place nor move into a carved validation split.
    supplied = [s for s in ("validation", "test") if getattr(d, s)]
    leaks = _leakage(cfg, recs, supplied, ledger)
    step("leakage")
    clusters = _dedup(cfg, recs, ledger)
    step("dedup")
    mixed = [c for c in clusters["train"] if c["kind"] == "near" and len(c["outputs"]) > 1]
    if mixed:
        log.info(f"near-duplicates with different outputs: {len(mixed)} cluster(s) in train")
    labels = _closed_labels(recs["train"], cfg.eval.max_labels)
    if labels is None and cfg.eval.constrained != "off":
        validate.rare_labels(recs["train"], cfg.eval.max_labels, problems)
    log.info(f"labels: {len(labels)} classes (closed set)" if labels else "labels: open-ended outputs (no closed label set)")
    carved = _carve(cfg, recs, labels is not None, ledger)
    leaks += _leakage(cfg, recs, [s for s in ("validation", "test") if s not in supplied], ledger)
    step("split")
    validate.check_labels(recs, labels, problems)
    if not recs["train"]:
        problems.add("no_training_data", d.train, expected="at least one training example",
                     found=f"none left ({_dropped(ledger, 'train') or 'nothing read'})")
    else:
        validate.check_sizes(recs, labels, {s: getattr(d, s) or d.train for s in SPLITS},
                             {s: carved.get(s) or f"none left of {ledger.read[s]} read ({_dropped(ledger, s) or 'no rows'})"
                              for s in SPLITS}, problems)
    problems.raise_if_errors("cannot prepare the data", ledger.summary(recs))
    _limit(cfg, recs, labels, ledger)
    accounting = ledger.summary(recs)
    if TASKS[cfg.task].chunks_documents:
        recs = {s: chunk.chunk(r, tokenizer, d.chunk_tokens, d.chunk_overlap) for s, r in recs.items()}
        log.info(f"chunked into {', '.join(f'{s} {len(r)}' for s, r in recs.items())} windows of {d.chunk_tokens} tokens")
    step("chunk" if TASKS[cfg.task].chunks_documents else "limit")
    token_stats = _stats(cfg, recs, tokenizer, labels, problems)
    step("token statistics")
    bar.close()
    manifest = {
        "files": files, "schema": decision.describe(), "labels": labels, "accounting": accounting,
        "columns": {"input": decision.input_columns, "output": decision.output_column, "chat": decision.chat_column},
        "chunks": {s: len(r) for s, r in recs.items()} if TASKS[cfg.task].chunks_documents else None,
        "decisions": _decisions(cfg, decision, labels),
        "cleaning": ops_report, "dedup": {s: _counted(c) for s, c in clusters.items()},
        "conflicts": {"count": len(conflicts), "first": conflicts[:MAX_FINDINGS], "near_mixed": len(mixed)},
        "leakage": {"policy": d.leakage, "counts": leakage.summary(leaks),
                    "train_examples": len({lk.train["id"] for lk in leaks}),
                    "first": [lk.to_dict() for lk in leaks[:MAX_FINDINGS]]},
        "stats": token_stats,
        "problems": {"totals": problems.totals(), "first": [p.to_dict() for p in problems.items[:200]]},
        "dropped_rows": ledger.rows,
    }
    return recs, manifest


def _clean(cfg: Config, recs: dict, decision: Decision, problems: Problems, ledger: _Ledger) -> dict:
    """Apply the cleaning operations to every split, then drop records left empty."""
    d, report = cfg.data, {}
    for s in [s for s in SPLITS if recs[s]]:
        recs[s], results = clean.clean(recs[s], d.clean, min_chars=d.min_chars, max_chars=d.max_chars,
                                       date_order=d.date_order, boilerplate_share=d.boilerplate_share)
        for res in results:
            ledger.drop_all(s, res.dropped)
        report[s] = [r.to_dict() for r in results]
        log.info(f"clean {s}: " + ", ".join(f"{r.name} changed {r.changed}" + (f" dropped {len(r.dropped)}" if r.dropped else "")
                                       for r in results))
        recs[s], empty = validate.drop_empty(recs[s], decision, problems)
        ledger.drop_all(s, empty)
    return report


def _limit(cfg: Config, recs: dict, labels, ledger: _Ledger) -> None:
    """`train_limit`: keep a (stratified) subsample of train; the rest is dropped as `train_limit`."""
    limit = cfg.data.train_limit
    if not limit or len(recs["train"]) <= limit:
        return
    recs["train"], rest = split.take(recs["train"], limit, cfg.train.seed + 2, labels is not None, False)
    ledger.drop_all("train", [(r, "train_limit") for r in rest])
    log.info(f"train_limit: kept {len(recs['train'])} training examples{' (stratified)' if labels else ''}")


def _read(cfg: Config, problems: Problems, ledger: _Ledger) -> tuple[dict, Decision | None, list[dict]]:
    """Ingest every configured split and map its rows to records with one shared schema decision."""
    d, base, skip = cfg.data, Path(cfg.base_dir), cfg.data.errors == "skip"
    recs: dict[str, list[dict]] = {s: [] for s in SPLITS}
    files, decision = [], None
    for s in SPLITS:
        spec = getattr(d, s)
        if not spec:
            continue
        encoding = d.encoding if isinstance(d.encoding, str) else d.encoding.get(s, "utf-8")
        ing = ingest(spec, base, d.format, encoding, problems, skip_bad_rows=skip, delimiter=d.delimiter,
                     key_column=d.json_key_column, fields=d.fields)
        files += [{"split": s, **f} for f in ing.files]
        for f in ing.files:
            if "encoding" in f:
                log.info(f"{f['path']}: read as {f['encoding']}")
        for sep in sorted({f["delimiter"] for f in ing.files if "delimiter" in f}):
            n = sum(f.get("delimiter") == sep for f in ing.files)
            log.info(f"{s}: fields separated by {sep!r} in {n} of {len(ing.files)} file(s) (data.delimiter={d.delimiter})")
        ledger.read[s] = ing.read
        for row, reason in ing.skipped:
            ledger.drop(s, {"id": row.id, "source": {"file": row.file, "line": row.line, "page": row.page},
                            "raw": row.fields.get("raw", row.fields)}, reason)
        if not ing.rows:
            continue
        first_file = ing.files[0]["path"] if ing.files else spec
        if decision is None:
            decision = decide(ing.rows, ing.columns, d.schema_, d.input_columns, d.output_column, first_file, problems)
            if decision is None:
                return recs, None, files
            log.info(decision.describe())
            validate.check_template(d.template, decision, first_file, problems)
        else:
            validate.check_columns(_split_decision(cfg, s, decision), ing.columns, first_file, problems)
        if s == "test" and cfg.eval.references:
            validate.check_reference_columns(cfg.eval.references, ing.columns, first_file, problems)
        recs[s] = _records(s, ing.rows, decision, cfg, problems, ledger)
    if cfg.eval.references and not d.test:
        problems.add("references_without_test", "config", None, "eval.references",
                     expected="a test file (data.test) holding the reference columns",
                     found="no data.test: the test split would be carved from train")
    return recs, decision, files


def _split_decision(cfg: Config, s: str, decision: Decision) -> Decision:
    """The decision a split's rows are read with: with eval.references, test targets come from the
    reference columns, so the test file need not have the training output column."""
    if s == "test" and cfg.eval.references and decision.output_column:
        return replace(decision, output_column=None)
    return decision


def _records(s: str, rows, decision: Decision, cfg: Config, problems: Problems, ledger: _Ledger) -> list[dict]:
    """Records for one split's rows; rows that cannot become records are problems (or, with
    `errors: skip`, warnings and dropped rows)."""
    skip, out = cfg.data.errors == "skip", []
    refs = cfg.eval.references if s == "test" else None
    split_decision = _split_decision(cfg, s, decision)
    for row in rows:
        local = Problems()
        rec = make_record(row, split_decision, cfg.data.group_by, local)
        if rec is not None and refs:
            rec = with_references(rec, row, refs, local)
        for p in local.items:
            problems.add(p.kind, p.file, p.line, p.field, p.expected, p.found, p.hint,
                         "warning" if skip or p.severity == "warning" else "error")
        if rec is None:
            errors = [p for p in local.items if p.severity == "error"]
            ledger.drop(s, {"id": row.id, "source": {"file": row.file, "line": row.line, "page": row.page},
                            "raw": row.fields}, errors[0].kind if errors else "invalid_record")
            continue
        if TASKS[cfg.task].chunks_documents and rec["group"] is None:
            rec["group"] = row.file  # overlapping chunks of one document must stay in one split
        out.append(rec)
    return out


def _dedup(cfg: Config, recs: dict, ledger: _Ledger) -> dict[str, list[dict]]:
    dc, clusters = cfg.data.dedup, {}
    for s in SPLITS:
        if not recs[s] or not (dc.exact or dc.near):
            clusters[s] = []
            continue
        res = dedup.dedup(recs[s], [prompt_text(r) for r in recs[s]], exact=dc.exact, near=dc.near,
                          threshold=dc.threshold, num_perm=dc.num_perm, n=dc.ngram, kind=dc.shingle)
        recs[s] = res.kept
        ledger.drop_all(s, res.dropped)
        clusters[s] = res.clusters
        by = Counter(why for _, why in res.dropped)
        log.info(f"dedup {s}: {by['exact_duplicate']} exact duplicates, {by['near_duplicate']} near-duplicates "
            f"(threshold {dc.threshold}) dropped in {len(res.clusters)} clusters")
    return clusters


def _counted(clusters: list[dict]) -> dict:
    return {"exact_clusters": sum(c["kind"] == "exact" for c in clusters),
            "exact_dropped": sum(len(c["dropped"]) for c in clusters if c["kind"] == "exact"),
            "near_clusters": sum(c["kind"] == "near" for c in clusters),
            "near_dropped": sum(len(c["dropped"]) for c in clusters if c["kind"] == "near"),
            "first": clusters[:MAX_FINDINGS]}


def _closed_labels(train: list[dict], max_labels: int) -> list[str] | None:
    """The sorted label set when train outputs are few (<= max_labels) and each occurs twice or more."""
    outs = Counter(r["output"] for r in train if r.get("output") is not None)
    if not outs or len(outs) > max_labels or min(outs.values()) < 2 or any(r.get("output") is None for r in train):
        return None
    return sorted(outs)


def _carve(cfg: Config, recs: dict, stratify: bool, ledger: _Ledger) -> dict[str, str]:
    """Carve test, then validation, out of train when no file was given for them; returns, per carved
    split, how it was carved (what an empty split's problem says)."""
    n, how = len(recs["train"]), {}
    for s, frac, offset in (("test", cfg.data.test_fraction, 0), ("validation", cfg.data.val_fraction, 1)):
        if getattr(cfg.data, s):
            continue
        recs["train"], held = split.carve(recs["train"], frac, cfg.train.seed + offset, stratify, of=n)
        how[s] = (f"carved {frac:.0%} of {n} training example(s) (after cleaning and de-duplication): "
                  f"{len(held)} example(s)")
        recs[s] = held
        ledger.moved["train"][s] += len(held)
        ledger.read[s] = len(held)
        log.info(f"{s}: carved {len(held)} examples from train ({frac:.0%}{', stratified' if stratify else ''}"
            f"{', by ' + cfg.data.group_by if cfg.data.group_by else ''}, seed {cfg.train.seed + offset})")
    return how


def _dropped(ledger: _Ledger, split_name: str) -> str:
    """`3 exact_duplicate, 1 empty_text`: a split's dropped rows by reason."""
    return ", ".join(f"{n} {why}" for why, n in ledger.dropped[split_name].most_common())


def _report_conversions(problems: Problems) -> None:
    """One line saying how many non-string values were converted to text, by field, and where the first was."""
    found = [p for p in problems.items if p.kind == "converted_value"]
    if found:
        by_field = Counter(p.field for p in found)
        log.warning(f"converted {len(found)} non-string value(s) to text ({', '.join(f'{n} in {f}' for f, n in by_field.most_common())}); "
                    f"first: {found[0].file}:{found[0].line} {found[0].found} (all listed in the manifest's problems)")


def _leakage(cfg: Config, recs: dict, held: list[str], ledger: _Ledger) -> list:
    """Find train examples matching the `held` splits and apply the leakage policy."""
    if not held:
        return []
    dc = cfg.data.dedup
    leaks = leakage.find(recs["train"], {s: recs[s] for s in held}, dc.near, dc.threshold, dc.num_perm,
                         dc.ngram, dc.shingle)
    counts = leakage.summary(leaks)
    line = "; ".join(f"{s}: {counts[s]['exact']} exact + {counts[s]['near']} near overlaps with train"
                     if s in counts else f"{s}: no overlap with train" for s in held)
    log.info(f"leakage {line}; policy {cfg.data.leakage}")
    recs["train"], leaked = leakage.apply(cfg.data.leakage, recs["train"], leaks)
    ledger.drop_all("train", leaked)
    return leaks


def _stats(cfg: Config, recs: dict, tokenizer, labels, problems: Problems) -> dict:
    out = {}
    for s in SPLITS:
        out[s], over = stats.split_stats(recs[s], tokenizer, cfg.data.max_length, cfg.data.template, labels)
        for item in over:
            src = item["record"]["source"]
            problems.add("over_long", src["file"], src.get("line"), None, expected=f"<= {cfg.data.max_length} tokens",
                         found=f"{item['length']} {out[s]['unit']}", severity="warning",
                         hint="truncated from the prompt's start at training time")
        if recs[s]:
            log.info(f"tokens {s}: p50 {out[s]['p50']}, p95 {out[s]['p95']}, max {out[s]['max']} {out[s]['unit']}; "
                f"{out[s]['over_max_length']} over max_length {cfg.data.max_length}")
    return out


def _decisions(cfg: Config, decision: Decision, labels) -> dict:
    d = cfg.data
    return {"schema": decision.describe(), "labels": "closed set" if labels else "open-ended",
            "validation": d.validation or f"carved {d.val_fraction:.0%} of train",
            "test": d.test or f"carved {d.test_fraction:.0%} of train", "group_by": d.group_by,
            "clean": d.clean, "dedup": d.dedup.model_dump(), "leakage": d.leakage,
            "train_limit": d.train_limit, "task": cfg.task,
            "references": cfg.eval.references}
