"""The retrain rule, its reasons and evidence, and the candidate data: drifted inputs to label, feedback.

The rule: drift (an input or output check fired) in `monitor.consecutive` consecutive windows, or a
significant quality decline in that many consecutive feedback windows. Operational alarms (errors,
latency) are reported in status.json but never recommend retraining: a new model would not fix them.
"""

from __future__ import annotations

import numpy as np

from tunelab.config.monitor import MonitorConfig
from tunelab.monitor.checks import TITLES
from tunelab.monitor.quality import QualityWindow
from tunelab.monitor.windows import Window, first_run


def _describe(c) -> str:
    title = TITLES.get(c.name, c.name.replace("_", " "))
    value = f"{c.value:.4g}" if c.value is not None else "?"
    ref = f" (reference {c.reference:.4g})" if c.reference is not None else ""
    p = f", p = {c.p:.3g} < {c.alpha:.3g}" if c.p is not None and c.alpha is not None else ""
    limit = f", threshold {c.threshold:.4g}" if c.threshold is not None else ""
    return f"{title} = {value}{ref}{p}{limit}"


def drift_detection(windows: list[Window], cfg: MonitorConfig) -> int | None:
    """Index of the window completing the first run of `consecutive` drifting windows, or None."""
    return first_run([bool(w.fired()) for w in windows], cfg.consecutive)


def quality_detection(qwindows: list[QualityWindow], cfg: MonitorConfig) -> int | None:
    return first_run([w.check.fired for w in qwindows], cfg.consecutive)


def reasons(windows: list[Window], at: int | None, qwindows: list[QualityWindow], qat: int | None,
            cfg: MonitorConfig) -> list[str]:
    """One line per check that fired in the detecting run of windows."""
    out = []
    if at is not None:
        run = windows[at - cfg.consecutive + 1: at + 1]
        names = sorted({c.name for w in run for c in w.fired()}, key=list(TITLES).index)
        for name in names:
            last = next(w.check(name) for w in reversed(run) if w.check(name) and w.check(name).fired)
            span = f"requests {run[0].start + 1}-{run[-1].end}"
            out.append(f"{last.family} drift in {cfg.consecutive} consecutive windows ({span}): {_describe(last)}")
    if qat is not None:
        w = qwindows[qat]
        c = w.check
        out.append(f"quality decline on labelled feedback {w.start + 1}-{w.end}: {c.name[8:]} {c.value:.4f} vs test "
                   f"{c.reference:.4f}, one-sided p = {c.p:.3g} < {cfg.alpha}")
    return out


def candidates(windows: list[Window], requests: list[dict], ref, encoder, cfg: MonitorConfig) -> list[dict]:
    """The logged inputs of drifting windows least like the training inputs (lowest cosine similarity to
    their nearest reference input), one per distinct text, for a person to label."""
    if not cfg.candidates or ref.embeddings is None or encoder is None:
        return []
    rows, seen = [], set()
    for w in windows:
        if not w.fired():
            continue
        for r in requests[w.start:w.end]:
            text = r.get("input")
            if text is None or not (200 <= r["status"] < 300) or text in seen:
                continue
            seen.add(text)
            rows.append(r)
    if not rows:
        return []
    sims = encoder([r["input"] for r in rows]) @ ref.embeddings.T
    novelty = 1.0 - sims.max(1)
    order = np.argsort(-novelty)[: cfg.candidates]
    return [{"request_id": rows[i]["request_id"], "time": rows[i]["time"], "input": rows[i]["input"],
             "answered": rows[i].get("label") if rows[i].get("label") is not None else rows[i].get("output"),
             "novelty": round(float(novelty[i]), 4)} for i in order]
