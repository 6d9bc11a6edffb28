"""trials.csv and tune_report.html of a study folder.

The report shows Optuna's own matplotlib views of the study (optimisation history, parameter
importances, parallel coordinates, slices; the Pareto front in multi-objective mode) as embedded PNGs,
how many configurations were tried, and the final test-set comparison of the best config against the
baselines — report.html's own summary and test sections, on the run folder the best config was
evaluated in. Rendered from `tunelab/templates/tune_study.html` (extends base.html, core/templating.py).
"""

from __future__ import annotations

import csv
import io
import logging
import warnings

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tunelab.config import Config
from tunelab.core import templating
from tunelab.core.rundir import RunDir, StudyDir, atomic_write_text
from tunelab.report.html import report_context
from tunelab.report.plots import data_uri
from tunelab.tune.objective import Objective
from tunelab.tune.space import decode_params
from tunelab.tune.study import best_trial, counts
from tunelab.tune.versus import Versus

log = logging.getLogger(__name__)


def value_names(cfg: Config, objective: Objective) -> list[str]:
    return [objective.name, *cfg.tune.also_minimize]


def trial_rows(study: optuna.Study, names: list[str]) -> tuple[list[str], list[dict]]:
    """One row per trial: number, state, objective value(s), parameters, steps, why it stopped, folder."""
    params = sorted({k for t in study.trials for k in t.params})
    header = ["number", "state", *names, *params, "steps", "max_steps", "pruned_at_step", "reason", "duration_s", "folder"]
    rows = []
    for t in study.trials:
        values = t.values or ([] if t.state != TrialState.PRUNED or not t.intermediate_values
                              else [t.intermediate_values[max(t.intermediate_values)]])
        a = t.user_attrs
        row = {"number": t.number, "state": t.state.name.lower(),
               **{n: (values[i] if i < len(values) else None) for i, n in enumerate(names)},
               **{k: decode_params(t.params).get(k) for k in params},
               "steps": a.get("steps"), "max_steps": a.get("max_steps"), "pruned_at_step": a.get("pruned_at_step"),
               "reason": a.get("reason") or ("not run: the study already had its trials" if a.get("surplus") else None),
               "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None, "folder": a.get("folder")}
        rows.append(row)
    return header, rows


def write_trials_csv(cfg: Config, sd: StudyDir, study: optuna.Study, objective: Objective) -> None:
    header, rows = trial_rows(study, value_names(cfg, objective))
    # Which row is the study's best (the one best_config.yaml is), so readers of the file need not know
    # the objective's direction (the dashboard's study page marks it).
    best = best_trial(study)
    for row in rows:
        row["best"] = best is not None and row["number"] == best.number
    header.append("best")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sd.trials_csv, buf.getvalue())


def _uri(fig_or_axes) -> str:
    """A data: URI (PNG) of an Optuna matplotlib plot (an Axes or an array of them)."""
    ax = fig_or_axes.flat[0] if hasattr(fig_or_axes, "flat") else fig_or_axes
    fig = ax.figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 4.5))
    return data_uri(fig)


def plots(study: optuna.Study, objective: Objective, names: list[str]) -> list[dict]:
    """Optuna's views of the study; a view that cannot be drawn (too few trials) says why instead."""
    from optuna.visualization import matplotlib as ov

    multi = len(study.directions) > 1
    kw = {"target": (lambda t: t.values[0]), "target_name": objective.name} if multi else {"target_name": objective.name}
    views = [("Optimisation history", lambda: ov.plot_optimization_history(study, **kw)),
             ("Parameter importances", lambda: ov.plot_param_importances(study, **kw)),
             ("Parallel coordinates", lambda: ov.plot_parallel_coordinate(study, **kw)),
             ("Slices", lambda: ov.plot_slice(study, **kw)),
             ("Intermediate values (what the pruner saw)", lambda: ov.plot_intermediate_values(study))]
    if multi:
        views.insert(0, ("Pareto front", lambda: ov.plot_pareto_front(study, target_names=names)))
    out = []
    for title, draw in views:
        if multi and title.startswith("Intermediate"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # Optuna marks its matplotlib views experimental
                out.append({"title": title, "alt": title, "uri": _uri(draw())})
        except Exception as e:   # e.g. importances need two complete trials with different values
            out.append({"title": title, "error": f"{type(e).__name__}: {e}"})
    return out


def write_report(cfg: Config, sd: StudyDir, study: optuna.Study, objective: Objective, final_rd: RunDir,
                 start: Versus | None = None):
    """Render tune_report.html (`start`: the best vs the starting config, when the study has one); return its path."""
    names = value_names(cfg, objective)
    best: FrozenTrial = best_trial(study)
    header, rows = trial_rows(study, names)
    pareto = []
    if len(study.directions) > 1:
        pareto = [{"number": t.number, "values": dict(zip(names, t.values)), "params": decode_params(t.params)}
                  for t in sorted(study.best_trials, key=lambda t: t.number)]
    final = {sec["id"]: sec for sec in report_context(final_rd)["sections"]}
    html = templating.render(
        "tune_study.html", study=study.study_name, task=cfg.task, model=cfg.model.name, method=cfg.method.name,
        sampler=cfg.tune.sampler, pruner=cfg.tune.pruner if not cfg.tune.also_minimize else "none (multi-objective)",
        objective=objective.name, direction=objective.direction, names=names, counts=counts(study),
        best={"number": best.number, "values": dict(zip(names, best.values)), "params": decode_params(best.params)},
        nav=[{"href": f"#{i}", "label": t} for i, t in (("summary", "Summary"), *([("versus", "Best vs start")] if start else []),
                                                         ("test", "Best config on the test set"), ("search", "Search"),
                                                         ("trials", "Trials"), ("space", "Space"))],
        final_sections=[final["summary"], final["test"]], plots=plots(study, objective, names),
        header=header, rows=rows, pareto=pareto, versus=_versus(start, objective), final_report=_relative(final_rd.report_html, sd),
        best_config=_relative(sd.best_config_path, sd), best_config_text=sd.best_config_path.read_text(encoding="utf-8"),
        space=yaml.safe_dump({k: v.model_dump(exclude_none=True) for k, v in cfg.tune.space.items()}, sort_keys=False))
    atomic_write_text(sd.report_html, html)
    return sd.report_html


def _versus(start: Versus | None, objective: Objective) -> dict | None:
    """The best-vs-start rows and the paired test's sentence for the template."""
    if start is None:
        return None
    return {"metric": start.metric(objective), "rows": start.rows(objective), "verdict": start.verdict()}


def _relative(path, sd: StudyDir) -> str:
    try:
        return str(path.resolve().relative_to(sd.path.resolve()))
    except ValueError:
        return str(path)
