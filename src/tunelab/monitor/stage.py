"""`tunelab monitor RUN --requests LOG… [--feedback FILE]`: production traffic against the run's own training data.

Reads the request log (traffic.py), builds the reference from the run answering for the model id
(deployment.py: after a promotion, the promoted run, from the promotion on), checks sliding windows
(windows.py, checks.py), scores labelled feedback (quality.py), applies the retrain rule (recommend.py)
and writes, through RunDir: monitor/status.json, monitor/windows.jsonl, monitor/report.html,
monitor/candidates.jsonl and, when the rule fires, retrain_recommendation.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config.monitor import MonitorConfig
from tunelab.core.rundir import RunDir, atomic_write_json, request_log_path, write_jsonl
from tunelab.monitor import deployment, recommend
from tunelab.monitor.quality import Feedback, QualityWindow, check_quality, metric_names, read_feedback
from tunelab.monitor.reference import Reference, attach_confidence, from_run
from tunelab.monitor.traffic import Traffic, load_traffic, read_requests
from tunelab.monitor.windows import Window, check_traffic

log = logging.getLogger(__name__)
INPUT_CHECKS = "embedding MMD, domain classifier, vocabulary"


@dataclass
class Outcome:
    """Everything one monitoring pass found (status.json is its summary)."""

    root: RunDir
    active: RunDir
    cfg: MonitorConfig
    traffic: Traffic
    reference: Reference
    windows: list[Window]
    feedback: Feedback | None = None
    quality: list[QualityWindow] = field(default_factory=list)
    drift_at: int | None = None
    quality_at: int | None = None
    candidates: list[dict] = field(default_factory=list)
    status: dict = field(default_factory=dict)


def default_logs(rd: RunDir) -> list[Path]:
    """The request log `tunelab serve` writes by default for runs in this runs folder."""
    return [request_log_path(rd.path.resolve().parent)]


def analyse(root: RunDir, logs: list[Path], feedback: Path | None, cfg: MonitorConfig, encoder=None) -> Outcome:
    """Check the traffic of `root`'s model id (no files written)."""
    active, since = deployment.active_run(root)
    traffic = load_traffic(logs, root.name, since)
    log.info(f"request log: {len(traffic.requests)} requests of model {root.name!r}"
             + (f" since its promotion to {active.name} at {since.isoformat()}" if since else "")
             + (f"; skipped {traffic.skipped}" if traffic.skipped else ""))
    ref = from_run(active, cfg)
    if ref.labels and any(r.get("label_probability") is not None for r in traffic.requests):
        attach_confidence(ref, active, cfg)
    if traffic.has_inputs and encoder is None:
        from tunelab.monitor.embed import Encoder
        encoder = Encoder(cfg.encoder, cfg.max_length)
    elif not traffic.has_inputs and traffic.requests:
        log.warning(f"the request log holds no input text (the server ran without serve.log_prompts): input drift "
                    f"checks ({INPUT_CHECKS}) cannot run; length, output and operations checks still do")
    out = Outcome(root, active, cfg, traffic, ref, check_traffic(ref, traffic.requests, cfg, encoder))
    if feedback is not None:
        _quality(out, feedback)
    out.drift_at = recommend.drift_detection(out.windows, cfg)
    out.quality_at = recommend.quality_detection(out.quality, cfg)
    if out.drift_at is not None:
        out.candidates = recommend.candidates(out.windows, traffic.requests, ref, encoder, cfg)
    out.status = status(out)
    return out


def _quality(out: Outcome, path: Path) -> None:
    rows, _, _ = read_requests([Path(f) for f in out.traffic.files])
    everything = {r["request_id"]: r for r in rows}
    columns = out.active.data.manifest().get("columns") or {}
    out.feedback = read_feedback(path, out.traffic.requests, everything, columns.get("output"))
    log.info(f"feedback: {len(out.feedback.items)} labelled answers matched"
             + (f", dropped {out.feedback.dropped}" if out.feedback.dropped else ""))
    test_rows = [r for r in out.active.predictions() if r.get("system") == "finetuned"]
    names = metric_names(out.reference.labels, out.active.config().eval.metrics)
    out.quality = check_quality(out.feedback, test_rows, out.reference.test_score, names, out.cfg)


def status(out: Outcome) -> dict:
    """status.json: the state now (the newest windows), what fired first, and what could not run."""
    cfg, latest = out.cfg, (out.windows[-1] if out.windows else None)
    alerts = []
    if latest is not None:
        alerts += [f"{c.family} drift: {recommend._describe(c)}" for c in latest.fired()]
        alerts += [f"operations: {recommend._describe(c)}" for c in latest.fired(("operations",))]
    if out.quality and out.quality[-1].check.fired:
        alerts.append(f"quality decline: {recommend._describe(out.quality[-1].check)}")
    state = ("waiting" if latest is None else "drift" if latest.fired() else "ok")
    if out.quality and out.quality[-1].check.fired:
        state = "quality_decline" if state in ("ok", "waiting") else state
    if state == "ok" and latest is not None and latest.fired(("operations",)):
        state = "operations"
    not_run = {c.name: c.skipped for c in (latest.checks if latest else []) if c.skipped}
    doc = {
        "model": out.root.name, "active_run": out.active.name, "state": state, "alerts": alerts,
        "checked": deployment.utc_now(), "requests": len(out.traffic.requests), "logs": out.traffic.files,
        "skipped_log_lines": out.traffic.skipped, "has_inputs": out.traffic.has_inputs,
        "window": cfg.window, "step": cfg.step, "alpha": cfg.alpha, "consecutive": cfg.consecutive,
        "windows": len(out.windows), "not_run": not_run,
        "waiting_for": (f"{cfg.window - len(out.traffic.requests)} more requests for the first window"
                        if latest is None else None),
        "drift_detected": _detected(out.windows, out.drift_at), "latest": latest.to_dict() if latest else None,
        "quality": _quality_status(out), "recommendation": None,
    }
    if not out.traffic.has_inputs and out.traffic.requests:
        doc["not_run"]["input drift"] = (f"{INPUT_CHECKS}: the request log holds no input text; start `tunelab serve` "
                                         "with --log-prompts (serve.log_prompts: true) to check input drift")
    return doc


def _detected(windows: list[Window], at: int | None) -> dict | None:
    if at is None:
        return None
    w = windows[at]
    return {"window": at, "requests_seen": w.end, "time": w.time_end}


def _quality_status(out: Outcome) -> dict | None:
    if out.feedback is None:
        return None
    q = out.quality
    return {"feedback": out.feedback.file, "matched": len(out.feedback.items), "dropped": out.feedback.dropped,
            "windows": len(q), "latest": q[-1].to_dict() if q else None,
            "series": [{"feedback": [w.start + 1, w.end], "time": w.time_end, "value": w.check.value,
                        "p": w.check.p, "fired": w.check.fired} for w in q],
            "decline_detected": None if out.quality_at is None else
            {"window": out.quality_at, "feedback_seen": q[out.quality_at].end, "time": q[out.quality_at].time_end},
            "not_run": None if q else f"{len(out.feedback.items)} matched feedback items (< monitor.min_feedback "
                                      f"{out.cfg.min_feedback})"}


def recommendation(out: Outcome) -> dict | None:
    """retrain_recommendation.json, when the retrain rule fired."""
    if out.drift_at is None and out.quality_at is None:
        return None
    root, cfg = out.root, out.cfg
    flagged = [w.to_dict() for w in out.windows if w.fired()]
    return {
        "model": root.name, "run": out.active.name, "created": deployment.utc_now(), "recommend": "retrain",
        "reasons": recommend.reasons(out.windows, out.drift_at, out.quality, out.quality_at, cfg),
        "first_detected": {"drift": _detected(out.windows, out.drift_at),
                           "quality": (out.status.get("quality") or {}).get("decline_detected")},
        "evidence": {"windows": flagged, "quality": [w.to_dict() for w in out.quality if w.check.fired],
                     "settings": cfg.model_dump(include={"alpha", "window", "step", "consecutive", "psi_min",
                                                         "auc_min", "oov_min_increase"})},
        "candidates": {"to_label": str(root.monitor_candidates) if out.candidates else None,
                       "count": len(out.candidates),
                       "note": None if out.candidates else "no logged input text to list (serve.log_prompts is off)"
                       if not out.traffic.has_inputs else None,
                       "labelled_feedback": out.feedback.file if out.feedback else None,
                       "labelled_feedback_items": len(out.feedback.items) if out.feedback else 0},
        "next": f"label the candidates (keep request_id), then `tunelab retrain {root.path} --data LABELLED_FILE`",
    }


def run(rd: RunDir, logs: list[Path] | None = None, feedback: Path | None = None, cfg: MonitorConfig | None = None,
        encoder=None) -> Outcome:
    """Monitor `rd`'s model id over `logs` (default: the runs folder's request log) and write the outputs.

    The previous outputs stay until this pass has read its inputs and replaces them (a bad log or
    feedback file leaves the last report in place).
    """
    cfg = cfg or rd.config().monitor
    with rd.stage("monitor", fresh=False):
        out = analyse(rd, logs or default_logs(rd), feedback, cfg, encoder)
        write_outputs(rd, out)
    _log_summary(out)
    return out


def write_outputs(rd: RunDir, out: Outcome) -> None:
    """windows.jsonl, candidates.jsonl, retrain_recommendation.json (or none), report.html, status.json."""
    from tunelab.monitor.report import render_report

    rd.monitor_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(rd.monitor_windows, [w.to_dict() for w in out.windows])
    write_jsonl(rd.monitor_candidates, out.candidates)
    rec = recommendation(out)
    if rec is not None:
        atomic_write_json(rd.retrain_recommendation, rec)
        out.status["recommendation"] = str(rd.retrain_recommendation)
    else:
        rd.retrain_recommendation.unlink(missing_ok=True)
    out.status["report"] = str(rd.monitor_report)
    render_report(out, rd.monitor_report)
    atomic_write_json(rd.monitor_status, out.status)


def _log_summary(out: Outcome) -> None:
    st = out.status
    log.info(f"monitor {out.root.name}: {st['state']} after {st['requests']} requests in {st['windows']} windows")
    for a in st["alerts"]:
        log.info(f"  - {a}")
    if st["drift_detected"]:
        log.info(f"drift first detected after {st['drift_detected']['requests_seen']} requests")
    for name, why in st["not_run"].items():
        log.info(f"  not run: {name}: {why}")
    if st["recommendation"]:
        log.info(f"retrain recommended: {st['recommendation']}")
