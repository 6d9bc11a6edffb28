"""Calibration and power of `tunelab monitor`'s drift checks on seeded splits of Banking77 (and DialogSum).

    python benchmarks/monitor_drift.py [--seeds 20] [--encoder minilm-l6] [--json PATH]

Every trial is a stream of requests checked with the product's own code (monitor/reference.py `build`,
monitor/windows.py `check_traffic`, monitor/recommend.py `drift_detection`) against a reference made of
"training" inputs, exactly as `tunelab monitor` checks a run's traffic against its training split. The
stream holds the `monitor.consecutive` (2) overlapping windows of `monitor.window` (200) requests, `step`
(100) apart, that the retrain rule needs; the benchmark reports how often the first window is flagged
(a drift check fired) and how often the rule fires (drift in both windows: the monitor's alarm):

- same: the training part and the window are disjoint random draws from one pool of Banking77 queries
  (a same-distribution split). Any drift alarm is a false alarm; target <= alpha = 5% of trials.
- dialogsum: the window holds DialogSum dialogues instead of banking queries. Target >= 95% flagged.
- label_mix: half the window comes from 10 intents drawn at random, half from all of them (a campaign or an
  outage concentrating traffic on a few intents). Target >= 95% flagged.

Each request-log line answers with the query's true label (a perfect model; DialogSum has none, so only the
input checks see it) and counts prompt tokens with the encoder's tokenizer. Per trial the pool (a seeded
`--pool` queries of Banking77's train.csv) is shuffled: `--train` of it play the training data, windows
come from the rest. The encoder embeds each text once (its cache), so trials cost only the statistics.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path


from tunelab.config.monitor import MonitorConfig
from tunelab.monitor.recommend import drift_detection
from tunelab.monitor.reference import build
from tunelab.monitor.windows import Window, check_traffic

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("same", "dialogsum", "label_mix")
TARGETS = {"same": "<= 5% (alpha 0.05)", "dialogsum": ">= 95%", "label_mix": ">= 95%"}


def banking77(pool: int, seed: int = 0) -> list[tuple[str, str]]:
    """A seeded sample of `pool` (text, intent) rows of examples/banking77/train.csv."""
    with (ROOT / "examples" / "banking77" / "train.csv").open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    return random.Random(seed).sample(rows, min(pool, len(rows)))


def dialogues() -> list[str]:
    folder = ROOT / "examples" / "dialogsum"
    return [json.loads(l)["dialogue"] for f in sorted(folder.glob("*.jsonl")) for l in f.open(encoding="utf-8") if l.strip()]


def log_line(text: str, label: str | None, i: int, tokens: int) -> dict:
    """A request-log line of the serve contract for one answered chat request of a label-set run."""
    return {"time": f"2025-01-01T00:00:{i % 60:02d}.000Z", "request_id": f"r{i}", "key_id": None,
            "route": "/v1/chat/completions", "model": "bench", "status": 200, "error_type": None, "latency_ms": 20.0,
            "ttft_ms": None, "prompt_tokens": tokens, "completion_tokens": 1, "stream": False, "label": label,
            "label_probability": None, "input": text, "output": label}


@dataclass
class Trials:
    """What `trial` needs: the pools, the settings and the encoder (with its cache)."""

    pool: list[tuple[str, str]]
    dialogs: list[str]
    train: int
    cfg: MonitorConfig
    encoder: object
    counts: dict = field(default_factory=dict)

    def tokens(self, text: str) -> int:
        if text not in self.counts:
            self.counts[text] = len(self.encoder.tokenizer(text)["input_ids"])
        return self.counts[text]

    def requests(self, scenario: str, rest: list[tuple[str, str]], rng: random.Random, n: int) -> list[tuple[str, str | None]]:
        if scenario == "same":
            return rest[:n]
        if scenario == "dialogsum":
            return [(d, None) for d in rng.sample(self.dialogs, n)]
        intents = rng.sample(sorted({l for _, l in self.pool}), 10)
        focused = [x for x in rest if x[1] in intents][: n // 2]
        others = [x for x in rest if x not in focused][: n - len(focused)]
        mixed = focused + others
        rng.shuffle(mixed)
        return mixed

    def trial(self, scenario: str, seed: int, stream: bool = False) -> list[Window]:
        """The windows of one trial of `scenario`, checked against a fresh training part: one window, or
        (`stream`) the `consecutive` overlapping windows the retrain rule needs (window + step x (consecutive - 1)
        requests)."""
        rng = random.Random(seed)
        items = self.pool[:]
        rng.shuffle(items)
        train, rest = items[: self.train], items[self.train:]
        cfg = self.cfg.model_copy(update={"seed": seed})
        ref = build([t for t, _ in train], [self.tokens(t) for t, _ in train], cfg,
                    sorted({l for _, l in self.pool}), [l for _, l in train])
        n = cfg.window + (cfg.step * (cfg.consecutive - 1) if stream else 0)
        lines = [log_line(t, l, i, self.tokens(t)) for i, (t, l) in enumerate(self.requests(scenario, rest, rng, n))]
        return check_traffic(ref, lines, cfg, self.encoder)


def run(trials: Trials, scenarios: tuple[str, ...], seeds: range, stream: bool = False) -> dict:
    """Per scenario: the share of trials whose first window is flagged (and each check's firing rate there),
    and with `stream` the share in which the retrain rule fires (drift in `consecutive` windows in a row)."""
    out = {}
    for scenario in scenarios:
        flagged, alarms, by_check = 0, 0, {}
        for seed in seeds:
            windows = trials.trial(scenario, seed, stream)
            flagged += bool(windows[0].fired())
            alarms += drift_detection(windows, trials.cfg) is not None
            for c in windows[0].checks:
                if c.family in ("input", "output") and c.skipped is None:
                    by_check[c.name] = by_check.get(c.name, 0) + c.fired
        n = len(seeds)
        out[scenario] = {"flagged": flagged, "windows": n, "rate": flagged / n,
                         "alarms": alarms if stream else None, "alarm_rate": alarms / n if stream else None,
                         "checks": {k: v / n for k, v in by_check.items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--encoder", default="minilm-l6")
    ap.add_argument("--pool", type=int, default=2500, help="Banking77 queries shuffled per trial")
    ap.add_argument("--train", type=int, default=1500, help="of the pool, the training part (the rest: windows)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    from tunelab.monitor.embed import Encoder

    cfg = MonitorConfig(encoder=args.encoder)
    trials = Trials(banking77(args.pool), dialogues(), args.train, cfg, Encoder(args.encoder, cfg.max_length, 128))
    start = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    result = run(trials, tuple(args.scenarios.split(",")), seeds, stream=True)
    seconds = time.perf_counter() - start
    print(f"encoder {args.encoder}, window {cfg.window} (step {cfg.step}), alpha {cfg.alpha}, reference "
          f"{cfg.reference_size} of {args.train} training queries, {args.seeds} seeded trials per scenario "
          f"(seeds {args.first_seed}..{args.first_seed + args.seeds - 1}), each a "
          f"stream of {cfg.window + cfg.step * (cfg.consecutive - 1)} requests ({seconds:.0f} s)")
    for scenario, r in result.items():
        per = ", ".join(f"{k} {v:.0%}" for k, v in r["checks"].items())
        print(f"{scenario:<10} first window flagged {r['flagged']}/{r['windows']} = {r['rate']:.1%}; retrain rule "
              f"({cfg.consecutive} windows in a row) fired {r['alarms']}/{r['windows']} = {r['alarm_rate']:.1%} "
              f"(target {TARGETS[scenario]}); per check in the first window: {per}")
    if args.json_path:
        flat = {f"{s}_rate": r["rate"] for s, r in result.items()}
        flat.update({f"{s}_alarm_rate": r["alarm_rate"] for s, r in result.items()})
        flat.update({f"{s}_{k}": v for s, r in result.items() for k, v in r["checks"].items()})
        Path(args.json_path).write_text(json.dumps({**flat, "seeds": args.seeds, "first_seed": args.first_seed,
                                                    "encoder": args.encoder, "window": cfg.window,
                                                    "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
