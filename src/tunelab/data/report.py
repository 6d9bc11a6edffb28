"""The data report (`data/report.md`), rendered from the manifest alone so it can be rebuilt later."""

from __future__ import annotations


def _esc(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ⏎ ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]
    return out + [""]


def render_report(m: dict) -> str:
    """Markdown: inputs, accounting, cleaning samples, dedup clusters, conflicts, leakage, token stats."""
    lines = ["# Data report", "", f"Fingerprint `{m.get('fingerprint')}`. {m['schema']}.", ""]
    lines += ["## Inputs", ""] + _table(["split", "file", "format", "rows", "sha256"],
                                       [[f["split"], f["path"], f["format"], f["rows"], f["sha256"][:12]]
                                        for f in m["files"]])
    lines += ["## Accounting", "", "read = kept + dropped (by reason) + moved to another split.", ""]
    lines += _table(["split", "read", "kept", "dropped", "moved", "balanced"],
                    [[s, a["read"], a["kept"], _kv(a["dropped"]), _kv(a["moved"]), a["balanced"]]
                     for s, a in m["accounting"].items()])
    if m.get("chunks"):
        lines += [f"Chunked for pretraining into {_kv(m['chunks'])} windows.", ""]
    lines += _cleaning(m["cleaning"]) + _dedup(m["dedup"]) + _conflicts(m["conflicts"])
    lines += _leakage(m["leakage"]) + _stats(m["stats"], m.get("labels")) + _problems(m["problems"])
    return "\n".join(lines)


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def _cleaning(cleaning: dict) -> list[str]:
    out = ["## Cleaning", ""]
    for s, ops in cleaning.items():
        if not ops:
            continue
        out += _table([f"{s}: operation", "records changed", "dropped"], [[o["op"], o["changed"], o["dropped"]] for o in ops])
        for o in ops:
            for smp in o["samples"]:
                out += [f"- `{o['op']}` before: {_esc(smp['before'])}", f"  after: {_esc(smp['after'])}"]
        out.append("")
    return out


def _dedup(dedup: dict) -> list[str]:
    out = ["## Duplicates", ""]
    out += _table(["split", "exact clusters", "exact dropped", "near clusters", "near dropped"],
                  [[s, d["exact_clusters"], d["exact_dropped"], d["near_clusters"], d["near_dropped"]]
                   for s, d in dedup.items()])
    first = [(s, c) for s, d in dedup.items() for c in d["first"]][:15]
    if first:
        out += ["First clusters (the first member is kept):", ""]
        out += _table(["split", "kind", "similarity", "kept", "dropped", "texts"],
                      [[s, c["kind"], c["similarity"], c["kept"], ", ".join(c["dropped"][:3]), " / ".join(c["texts"])]
                       for s, c in first])
    return out


def _conflicts(conf: dict) -> list[str]:
    out = ["## Conflicting labels", "", f"{conf['count']} text(s) in train carry two or more different outputs; "
           f"{conf.get('near_mixed', 0)} near-duplicate cluster(s) in train mix outputs.", ""]
    if conf["first"]:
        out += _table(["text", "outputs", "records"],
                      [[c["text"], ", ".join(c["outputs"]), ", ".join(c["ids"][:4])] for c in conf["first"][:15]])
    return out


def _leakage(leak: dict) -> list[str]:
    counts = "; ".join(f"{s}: {c['exact']} exact, {c['near']} near" for s, c in leak["counts"].items()) or "none"
    out = ["## Leakage", "", f"Policy `{leak['policy']}`. Training examples matching held-out ones: "
           f"{leak['train_examples']} ({counts}).", ""]
    if leak["first"]:
        out += _table(["train", "held out", "kind", "similarity", "train text", "held-out text"],
                      [[x["train"], x["other"], x["kind"], x["similarity"], x["train_text"], x["other_text"]]
                       for x in leak["first"][:20]])
    return out


def _stats(st: dict, labels) -> list[str]:
    out = ["## Length statistics", ""]
    out += _table(["split", "examples", "unit", "mean", "p50", "p90", "p95", "p99", "max", "over max_length"],
                  [[s, x["examples"], x["unit"], x.get("mean", "-"), x.get("p50", "-"), x.get("p90", "-"),
                    x.get("p95", "-"), x.get("p99", "-"), x.get("max", "-"), f"{x['over_max_length']} (> {x['max_length']})"]
                   for s, x in st.items()])
    if labels:
        out += ["## Labels", "", f"{len(labels)} labels; imbalance (largest / smallest class in train): "
                f"{st['train'].get('imbalance')}.", ""]
        out += _table(["label"] + list(st), [[lab] + [x.get("labels", {}).get(lab, 0) for x in st.values()]
                                             for lab in labels])
    return out


def _problems(pr: dict) -> list[str]:
    out = ["## Problems", "", _kv(pr["totals"]) or "none", ""]
    out += [f"- {p['severity']}: {p['file']}:{p['line']} {p['kind']}: expected {p['expected']}, found {p['found']}"
            for p in pr["first"][:30]]
    return out + [""]
