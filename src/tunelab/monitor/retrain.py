"""`tunelab retrain RUN --data NEW…`: champion/challenger.

1. The new labelled data goes through the data stage alone (cleaning, dedup) and a stratified, seeded
   `monitor.holdout_fraction` of it is held out.
2. The challenger is an ordinary run (same config as the champion, the run answering for RUN's model id)
   trained on the champion's training split plus the rest of the new data. Its data stage sees the
   champion's test split and the new held-out part together as its test set, so dedup and the leakage
   check run against *both* test sets (leaked training examples are dropped and reported).
3. Both models answer both test sets (the same records, as prepared by the challenger's data stage), and
   paired tests (McNemar for accuracy, the paired bootstrap otherwise: evaluate/significance.py) compare them.
4. The challenger is promoted only when it is significantly better on the new held-out data and not
   significantly worse on the old test set; retrain.json records the evidence either way, and a promotion
   is written to RUN's promoted.json, which a running `tunelab serve` picks up (deployment.py).
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

from tunelab.config import Config, config_from_dict, dump_config
from tunelab.config.load import apply_overrides
from tunelab.core.errors import UserError
from tunelab.core.rundir import RunDir, atomic_write_json, write_jsonl
from tunelab.evaluate import metrics as M
from tunelab.evaluate.significance import bootstrap_ci, paired_test
from tunelab.monitor import deployment

log = logging.getLogger(__name__)


class RetrainError(UserError):
    """A retrain that cannot start (no new data, a champion that is not complete, a name in use)."""


def challenger_name(root: RunDir) -> str:
    """`<root>-retrain-<n>`, the first n whose folder does not exist."""
    n = 1
    while (root.path.parent / f"{root.name}-retrain-{n}").exists():
        n += 1
    return f"{root.name}-retrain-{n}"


def _rows(records: list[dict], columns: dict) -> list[dict]:
    """Records back in the run's own columns (input columns + output column), as the data stage reads them."""
    out_col = columns.get("output") or "output"
    rows = []
    for r in records:
        if r.get("messages"):
            raise RetrainError("retrain compares champion and challenger on single-input records; this run was "
                               "trained on conversations, which `tunelab retrain` does not support yet")
        rows.append({**(r.get("input") or {}), out_col: r.get("output")})
    return rows


def _copy_new(paths: list[Path], ch: RunDir) -> Path:
    """Copies of the new labelled files inside the challenger's folder (its data is then self-contained)."""
    ch.retrain_new.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(map(Path, paths)):
        if not p.is_file():
            raise RetrainError(f"new data file not found: {p}")
        shutil.copy(p, ch.retrain_new / (f"{i}-{p.name}" if len(paths) > 1 else p.name))
    return ch.retrain_new


def _prepare_new(champion_cfg: Config, columns: dict, folder: Path, ch: RunDir, holdout: float):
    """The new data through the data stage alone: cleaned, de-duplicated, `holdout` of it carved as test."""
    from tunelab.data.stage import prepare
    from tunelab.models import load_tokenizer

    raw = dump_config(champion_cfg)
    raw["data"].update(train=str(folder.resolve()), validation=None, test=None, test_fraction=holdout,
                       train_limit=None, leakage="drop", format="auto", schema="auto",
                       input_columns=columns.get("input") or raw["data"]["input_columns"],
                       output_column=columns.get("output") or raw["data"]["output_column"])
    raw["eval"]["references"] = None
    cfg = config_from_dict(raw, source="the new data's settings")
    prepared = prepare(cfg, ch.retrain_new_data, load_tokenizer(cfg.model))
    new_train = prepared.splits["train"] + prepared.splits["validation"]
    if not prepared.splits["test"]:
        raise RetrainError(f"the new data ({folder}) left nothing to hold out: give more labelled examples")
    return new_train, prepared.splits["test"], prepared.manifest


def challenger_config(champion: RunDir, name: str, overrides: list[str]) -> Config:
    """The champion's config under a new name, its data to be filled in by `build_challenger_data`."""
    raw = apply_overrides(dump_config(champion.config()), list(overrides))
    raw["name"] = name
    raw["runs_dir"] = str(champion.path.resolve().parent)
    return config_from_dict(raw, source=f"the challenger of {champion.name}")


def build_challenger_data(champion: RunDir, ch: RunDir, cfg: Config, new: list[Path]) -> dict:
    """Write the challenger's train, validation and two-part test files; point its config at them."""
    columns = champion.data.manifest().get("columns") or {}
    folder = _copy_new(new, ch)
    new_train, new_holdout, manifest = _prepare_new(champion.config(), columns, folder, ch, cfg.monitor.holdout_fraction)
    old = champion.data.splits()
    write_jsonl(ch.retrain_part("train"), _rows(old["train"] + new_train, columns))
    write_jsonl(ch.retrain_part("validation"), _rows(old["validation"], columns))
    write_jsonl(ch.retrain_part("old_test"), _rows(old["test"], columns))
    write_jsonl(ch.retrain_part("new_holdout"), _rows(new_holdout, columns))
    d = cfg.data
    d.train, d.validation, d.test = (str(ch.retrain_part("train")), str(ch.retrain_part("validation")),
                                     str(ch.retrain_test))
    d.format, d.train_limit, d.leakage = "jsonl", None, "drop"
    d.input_columns, d.output_column = columns.get("input") or d.input_columns, columns.get("output") or d.output_column
    cfg.eval.references = None
    log.info(f"challenger data: {len(old['train'])} champion training examples + {len(new_train)} new; test: "
             f"{len(old['test'])} champion test + {len(new_holdout)} new held out")
    return {"new_files": [str(p) for p in new], "new_kept": len(new_train) + len(new_holdout),
            "new_train": len(new_train), "new_holdout": len(new_holdout),
            "new_dropped": {s: a.get("dropped") for s, a in (manifest.get("accounting") or {}).items()}}


def _parts(ch: RunDir) -> dict[str, list[dict]]:
    """The challenger's prepared test split, by the file each record came from (old test, new held out)."""
    test = ch.data.splits()["test"]
    names = {"old_test": ch.retrain_part("old_test").name, "new_holdout": ch.retrain_part("new_holdout").name}
    return {part: [r for r in test if Path(r["source"]["file"]).name == name] for part, name in names.items()}


def compare(champion: RunDir, ch: RunDir, alpha: float, samples: int, seed: int) -> dict:
    """Both models on both test sets: metrics with 95% intervals and the paired test on the first metric."""
    from tunelab.predictor import Predictor

    labels = champion.data.manifest().get("labels")
    names = M.scalar_names(M.metrics_for("classification" if labels else "generation", champion.config().eval.metrics))
    names, primary = names[:2], names[0]
    parts = _parts(ch)
    answers: dict[str, dict[str, list[str]]] = {}
    for who, rd in (("champion", champion), ("challenger", ch)):
        p = Predictor(rd.path)
        answers[who] = {part: p.predict([r["input"] for r in recs]) if recs else [] for part, recs in parts.items()}
        del p
    out = {"metric": primary, "metrics": names}
    for part, recs in parts.items():
        refs = [r["output"] for r in recs]
        entry = {"n": len(recs)}
        for who in ("champion", "challenger"):
            preds = answers[who][part]
            entry[who] = {**M.compute_metrics(names, preds, refs), "ci": bootstrap_ci(names, preds, refs, samples=samples, seed=seed)} if recs else {}
        if recs:
            entry["paired"] = paired_test(primary, answers["challenger"][part], answers["champion"][part], refs,
                                          samples=samples, seed=seed)
        out[part] = entry
    return out


def decide(comparison: dict, alpha: float) -> dict:
    """Promote only when significantly better on the new data and not significantly worse on the old."""
    metric, new, old = comparison["metric"], comparison["new_holdout"], comparison["old_test"]
    better = bool(new.get("paired")) and new["paired"]["delta"] > 0 and new["paired"]["p"] < alpha
    worse = bool(old.get("paired")) and old["paired"]["delta"] < 0 and old["paired"]["p"] < alpha
    reasons = []
    if new.get("paired"):
        d, p = new["paired"]["delta"], new["paired"]["p"]
        reasons.append(f"new held-out data (n={new['n']}): {metric} {new['champion'][metric]:.4f} -> "
                       f"{new['challenger'][metric]:.4f} ({d:+.4f}, {new['paired']['test']} p = {p:.3g}): "
                       + ("significantly better" if better else "not significantly better"))
    else:
        reasons.append("no new held-out data to compare on")
    if old.get("paired"):
        d, p = old["paired"]["delta"], old["paired"]["p"]
        reasons.append(f"old test set (n={old['n']}): {metric} {old['champion'][metric]:.4f} -> "
                       f"{old['challenger'][metric]:.4f} ({d:+.4f}, {old['paired']['test']} p = {p:.3g}): "
                       + ("significantly worse" if worse else "not significantly worse"))
    return {"promoted": better and not worse, "better_on_new": better, "worse_on_old": worse, "alpha": alpha,
            "reasons": reasons}


def run(run_dir: Path, new: list[Path], name: str | None = None, overrides: list[str] = ()) -> dict:
    """Train a challenger for `run_dir`'s model id on its data plus `new`, compare, and promote if it wins.

    Returns:
        retrain.json: the comparison, the decision with its reasons, and the data accounting.

    Raises:
        RetrainError: no new data, or a champion that is not complete.
        RunDirError: the challenger's name is taken.
    """
    from tunelab import pipeline

    if not new:
        raise RetrainError("give the new labelled data: tunelab retrain RUN --data FILE [--data FILE ...]")
    root = RunDir.open(run_dir)
    champion, _ = deployment.active_run(root)
    champion.require_complete("retrain from it")
    cfg = challenger_config(champion, name or challenger_name(root), overrides)
    ch = RunDir.create(cfg)
    data = build_challenger_data(champion, ch, cfg, new)
    ch.write_config(cfg)
    log.info(f"training challenger {ch.name} (champion: {champion.name})")
    pipeline.run(copy.deepcopy(cfg))
    mcfg = cfg.monitor
    comparison = compare(champion, ch, mcfg.alpha, cfg.eval.bootstrap_samples, cfg.train.seed)
    decision = decide(comparison, mcfg.alpha)
    doc = {"model": root.name, "champion": str(champion.path.resolve()), "challenger": str(ch.path.resolve()),
           "created": deployment.utc_now(), "decision": decision, "comparison": comparison, "data": data}
    atomic_write_json(ch.retrain_json, doc)
    for line in decision["reasons"]:
        log.info(f"  {line}")
    if decision["promoted"]:
        deployment.promote(root, ch, {"retrain": str(ch.retrain_json), **decision})
        log.info(f"promoted {ch.name}: it now answers for model id {root.name!r} ({root.promoted_path}); a running "
                 "`tunelab serve` switches to it without a restart")
    else:
        log.info(f"not promoted: {champion.name} keeps answering for {root.name!r} (evidence: {ch.retrain_json})")
    return doc
