"""The search space: `tune.space` distributions -> Optuna suggestions -> a trial's config.

A trial's config is the study's config with the sampled values applied through the config loader's
own dotted overrides (`config.apply_overrides`), so a trial is validated exactly as `tunelab run
CONFIG key=value ...` would be.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import optuna

from tunelab.config import Config, apply_overrides, config_from_dict, dump_config
from tunelab.config.tune import Distribution
from tunelab.core.errors import ConfigError


def suggest(trial: optuna.Trial, space: dict[str, Distribution]) -> dict[str, Any]:
    """Ask the trial for one value per searched key."""
    params = {}
    for key, d in space.items():
        if d.type == "categorical":
            # Optuna stores choices as JSON-able scalars; lists (e.g. target_modules) travel as JSON text.
            choices = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in d.choices]
            value = trial.suggest_categorical(key, choices)
            params[key] = json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value
        elif d.type == "int":
            params[key] = trial.suggest_int(key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            params[key] = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    return params


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    """A stored trial's params as config values (JSON-encoded list choices decoded)."""
    return {k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in params.items()}


def overrides(params: dict[str, Any]) -> list[str]:
    """`key=value` overrides for `apply_overrides`; values as JSON, which the override parser reads as YAML."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def trial_config(base: Config, params: dict[str, Any], runs_dir: str, name: str,
                 extra: dict[str, Any] | None = None) -> Config:
    """`base` with `params` (and `extra`, e.g. threads per worker) applied, in run folder runs_dir/name.

    Raises:
        ConfigError: a sampled value the config rejects (the message names the key).
    """
    raw = copy.deepcopy(dump_config(base))
    raw.update(name=name, runs_dir=runs_dir)
    apply_overrides(raw, overrides({**params, **(extra or {})}))
    return config_from_dict(raw, source=f"trial config ({', '.join(f'{k}={v}' for k, v in params.items())})")


def check_values(base: Config) -> None:
    """Build a config with each end of every range and each choice, so a value the config rejects
    fails before any trial runs.

    Raises:
        ConfigError: naming the key and the value.
    """
    for key, d in base.tune.space.items():
        values = d.choices if d.type == "categorical" else [d.low, d.high]
        for v in values:
            v = int(v) if d.type == "int" else v
            try:
                trial_config(base, {key: v}, base.runs_dir, base.name)
            except ConfigError as e:
                raise ConfigError(f"tune.space.{key}: the value {v!r} is not accepted by the config:\n{e}") from None


def grid(space: dict[str, Distribution]) -> dict[str, list]:
    """The grid sampler's search space: categorical choices and stepped ranges.

    Raises:
        ConfigError: a float range without a step (a grid needs finitely many values).
    """
    out = {}
    for key, d in space.items():
        if d.type == "categorical":
            out[key] = [json.dumps(c) if isinstance(c, (list, dict)) else c for c in d.choices]
        elif d.step is None and d.type == "float":
            raise ConfigError(f"tune.sampler=grid: tune.space.{key} is a float range without a step; give it a "
                              "`step` or list its values as a categorical")
        else:
            step = d.step or 1
            n = int(round((d.high - d.low) / step)) + 1
            out[key] = [int(d.low + i * step) if d.type == "int" else d.low + i * step for i in range(n)]
    return out


def grid_size(space: dict[str, Distribution]) -> int:
    """Combinations in the grid."""
    return len(list(itertools.product(*grid(space).values()))) if space else 1
