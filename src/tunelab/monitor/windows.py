"""Sliding windows over the monitored model's requests, each checked against the reference."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config.monitor import MonitorConfig
from tunelab.core.log import progress
from tunelab.monitor.checks import Check, check_window
from tunelab.monitor.reference import Reference

DRIFT = ("input", "output")


@dataclass
class Window:
    """Requests [start, end) of the traffic (0-based positions) and their checks."""

    index: int
    start: int
    end: int
    time_start: str
    time_end: str
    checks: list[Check]

    def fired(self, families: tuple[str, ...] = DRIFT) -> list[Check]:
        return [c for c in self.checks if c.fired and c.family in families]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict:
        return {"index": self.index, "requests": [self.start + 1, self.end], "time": [self.time_start, self.time_end],
                "drift": bool(self.fired()), "operations": bool(self.fired(("operations",))),
                "checks": {c.name: c.to_dict() for c in self.checks}}


def spans(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """Start and end of every full window over `n` requests, `step` apart; the last one ends at `n`
    (so the newest requests are always checked, even when `n - window` is not a multiple of `step`)."""
    if n < window:
        return []
    out = [(s, s + window) for s in range(0, n - window + 1, step)]
    if out[-1][1] != n:
        out.append((n - window, n))
    return out


def check_traffic(ref: Reference, requests: list[dict], cfg: MonitorConfig, encoder, latest_only: bool = False) -> list[Window]:
    """Every window of `requests` (or only the newest one), checked and judged."""
    todo = spans(len(requests), cfg.window, cfg.step)
    if latest_only:
        todo = todo[-1:]
    out = []
    for i, (a, b) in enumerate(progress(todo, desc="monitor windows", unit="window")):
        part = requests[a:b]
        # A window's seed is its position, so re-checking the same window gives the same p-values.
        checks = check_window(ref, part, cfg, encoder, seed=cfg.seed * 1_000_003 + a)
        out.append(Window(len(todo) - 1 if latest_only else i, a, b, part[0]["time"], part[-1]["time"], checks))
    return out


def first_run(flags: list[bool], length: int) -> int | None:
    """The index at which `length` consecutive True values are first complete, or None."""
    streak = 0
    for i, f in enumerate(flags):
        streak = streak + 1 if f else 0
        if streak >= length:
            return i
    return None
