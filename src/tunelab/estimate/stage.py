"""`tunelab estimate CONFIG`: before training, its peak memory (weights, gradients, optimizer state,
activations) and its wall time, with what to change when it will not fit. `tunelab run` prints it first.

The memory is counted part by part from the model's parameters on the meta device (nothing loaded)
and the data's longest batch; when that fits, a few real training steps on this machine
(`calibrate.py`) measure the peak and the time of a step, a validation pass and a save, and the
prepared data's token counts scale them to the whole run.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.config import Config
from tunelab.core.rundir import DataDir, RunDir
from tunelab.data import Prepared, cache, prepare
from tunelab.estimate import advice
from tunelab.estimate.calibrate import Calibration, calibrate
from tunelab.estimate.memory import CUDA_CONTEXT, Memory, analytic, available, current_rss, gb
from tunelab.methods import METHODS, check_method
from tunelab.models import Precision, choose_precision, empty_model, load_tokenizer
from tunelab.tasks import TASKS
from tunelab.train import auto
from tunelab.train.render import Renderer
from tunelab.train.stage import encode, threads, validation_subset

log = logging.getLogger(__name__)
HEADROOM = 0.9   # a run planned above 90% of the memory it may use is flagged: estimates are +-25%


@dataclass
class Plan:
    """What the run will do, counted from the prepared data the way the Trainer counts it."""

    examples: int
    tokens: int                  # training tokens of one pass over the data
    steps: int                   # optimizer steps
    per_step: int                # examples per optimizer step and process
    tokens_per_step: float       # mean tokens per optimizer step and process
    evals: int                   # validation passes (every eval_every steps, and the final state)
    eval_tokens: int             # tokens of one validation pass


@dataclass
class Estimate:
    cfg_name: str
    model: str
    method: str
    precision: str
    device: str
    nproc: int
    plan: Plan
    memory: Memory               # per process
    available: float             # what the processes of this machine may use together (one GPU for CUDA)
    calibration: Calibration | None = None
    seconds: dict = field(default_factory=dict)   # setup, step, eval, save, loop, total
    warnings: list[str] = field(default_factory=list)

    @property
    def needed(self) -> float:
        """Memory the run needs of `available`: every process on one machine shares its RAM."""
        return self.memory.total * (self.nproc if self.device == "cpu" else 1)

    def to_dict(self) -> dict:
        return {"name": self.cfg_name, "model": self.model, "method": self.method, "precision": self.precision,
                "device": self.device, "processes": self.nproc, "plan": vars(self.plan),
                "memory": self.memory.to_dict(), "needed": self.needed, "available": self.available,
                "seconds": self.seconds, "calibration": self.calibration and self.calibration.to_dict(),
                "warnings": self.warnings}

    def text(self) -> str:
        """The estimate as the console shows it."""
        p, m = self.plan, self.memory
        procs = f"{self.nproc} processes" if self.nproc > 1 else "1 process"
        lines = [f"estimate for {self.cfg_name}: {self.model}, method {self.method}, {self.precision}, {procs} on {self.device}",
                 f"  data: {p.examples:,} training examples, {p.tokens:,} tokens; {p.steps:,} optimizer steps of "
                 f"{p.per_step} examples per process, {p.evals} validation pass{'es' if p.evals != 1 else ''}",
                 f"  peak {m.where}{' per process' if self.nproc > 1 else ''}: {gb(m.total)} = {m.line()}",
                 f"  needs {gb(self.needed)} of {gb(self.available)} available"]
        s = self.seconds
        if s:
            frozen = f" + frozen layers once {_duration(s['frozen'])}" if s.get("frozen") else ""
            lines.append(f"  time: {_duration(s['total'])} = set-up {_duration(s['setup'])}{frozen} + {p.steps:,} steps x "
                         f"{s['step']:.2f} s + {p.evals} validations x {s['eval']:.1f} s + {p.evals + 1} saves x "
                         f"{s['save']:.1f} s (measured on this machine: {self.calibration.steps} calibration steps "
                         f"at load average {self.calibration.load_average:.1f} on {self.calibration.cores} cores; "
                         "early stopping can end the run sooner)")
        else:
            lines.append("  time: not measured (no calibration steps ran)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def plan(cfg: Config, train_ex: list[dict], val_ex: list[dict], nproc: int) -> Plan:
    """Steps and tokens of the run, counted like the Trainer: batches dealt to the processes in turn,
    then grouped by gradient accumulation; `max_steps` wins over `epochs`."""
    t = cfg.train
    tokens = sum(len(e["input_ids"]) for e in train_ex)
    steps = t.max_steps or math.ceil(t.epochs * auto.steps_per_epoch(cfg, len(train_ex), nproc))
    evals = steps // t.eval_every + int(steps % t.eval_every > 0)
    per_step = t.batch_size * t.grad_accum
    return Plan(len(train_ex), tokens, steps, per_step, tokens / max(len(train_ex), 1) * per_step, evals,
                sum(len(e["input_ids"]) for e in val_ex))


def _analytic(cfg: Config, prepared: Prepared, prec: Precision, train_ex: list[dict]) -> Memory:
    """The peak counted from the architecture (meta device) with the method applied, and the longest batch."""
    model = empty_model(cfg.model, cfg.task, labels=prepared.labels)
    # qlora's own apply needs the 4-bit model; its adapters are LoRA's, the 4-bit weights are counted below.
    apply = METHODS["lora" if cfg.method.name == "qlora" else cfg.method.name]
    model = apply(model, cfg.method, cfg.task)
    longest = sorted(train_ex, key=lambda e: -len(e["input_ids"]))[: cfg.train.batch_size]
    packed = cfg.train.batching != "padded" and TASKS[cfg.task].head == "causal_lm"
    row = max((len(e["input_ids"]) for e in longest), default=0)
    tokens = sum(len(e["input_ids"]) for e in longest) if packed else row * len(longest)
    supervised = sum(sum(1 for x in e["labels"] if x != -100) for e in longest if isinstance(e["labels"], list))
    return analytic(model, model.config, tokens=tokens, longest_row=tokens if packed else row, supervised=supervised,
                    act_bytes=2 if prec.autocast_dtype is not None else 4, causal=TASKS[cfg.task].head == "causal_lm",
                    quantized_4bit=cfg.method.name == "qlora", device=prec.device,
                    baseline=current_rss() if prec.device == "cpu" else CUDA_CONTEXT)


def _measured(mem: Memory, cal: Calibration) -> Memory:
    """The measured peak, split with the counted weights, gradients and optimizer state; the rest is activations."""
    if cal.peak_gpu is not None:
        peak, baseline = CUDA_CONTEXT + cal.peak_gpu, CUDA_CONTEXT
    else:
        peak, baseline = cal.peak_rss, cal.baseline_rss
    rest = peak - baseline - mem.weights - mem.gradients - mem.optimizer
    return Memory(mem.where, baseline, mem.weights, mem.gradients, mem.optimizer, max(rest, 0.0), measured=True)


def _seconds(p: Plan, cal: Calibration) -> dict:
    step = cal.step_seconds * p.tokens_per_step / max(cal.tokens_per_step, 1)
    evaluate = cal.eval_seconds_per_token * p.eval_tokens
    # Upper bound for saves: every validation improves (best/), plus last/.
    loop = p.steps * step + p.evals * evaluate + (p.evals + 1) * cal.save_seconds
    frozen = cal.frozen_seconds_per_token * (p.tokens + p.eval_tokens)   # method.freeze_below's one pass
    return {"setup": cal.setup_seconds, "frozen": frozen, "step": step, "eval": evaluate, "save": cal.save_seconds,
            "loop": loop, "total": cal.setup_seconds + frozen + loop}


def run(cfg: Config, prepared: Prepared, tokenizer, nproc: int = 1, calibrate_steps: int = 4) -> Estimate:
    """Estimate the training of `cfg` on `prepared` in `nproc` processes; `calibrate_steps=0` counts only."""
    cfg, _ = auto.resolve(cfg, len(prepared.splits["train"]), len(prepared.labels or []), nproc, quiet=True)
    prec = choose_precision(cfg.train)
    renderer = Renderer(tokenizer, cfg)
    quiet = logging.getLogger("tunelab.train")
    level = quiet.level
    quiet.setLevel(logging.WARNING)   # encoding messages belong to the run itself
    try:
        train_ex, val_ex, _ = encode(cfg, renderer, prepared)
        val_ex = validation_subset(cfg, val_ex)
    finally:
        quiet.setLevel(level)
    p = plan(cfg, train_ex, val_ex, nproc)
    mem = _analytic(cfg, prepared, prec, train_ex)
    est = Estimate(cfg.name, cfg.model.name, cfg.method.name, prec.reason, prec.device, nproc, p, mem,
                   float(available(prec.device)))
    if est.needed > est.available:
        est.warnings.append("the counted peak alone exceeds the memory available, so no calibration step was run")
    elif calibrate_steps > 0:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads(cfg, nproc))   # as each of the run's processes will
        try:
            est.calibration = calibrate(cfg, prepared, tokenizer, renderer, prec, train_ex, val_ex, calibrate_steps)
        finally:
            torch.set_num_threads(saved)
        est.memory = _measured(mem, est.calibration)
        est.seconds = _seconds(p, est.calibration)
        cal = est.calibration
        if prec.device == "cpu" and cal.load_average > 2 * cal.cores:   # twice as much work as cores: others' too
            est.warnings.append(f"the machine is busy (load average {cal.load_average:.1f} on {cal.cores} cores): the "
                                "time was measured under that load and will differ when it changes")
    _advise(cfg, est)
    return est


def _advise(cfg: Config, est: Estimate) -> None:
    if est.needed <= HEADROOM * est.available:
        return
    excess = (est.needed - HEADROOM * est.available) / (est.nproc if est.device == "cpu" else 1)
    tips = advice.suggestions(cfg, est.memory, excess, est.device, torch.cuda.is_available())
    est.warnings.append(f"this run will probably not fit: it needs about {gb(est.needed)} and {gb(est.available)} "
                        f"is available ({HEADROOM:.0%} is the safe limit). Try:\n    " + "\n    ".join(tips))


def for_config(cfg: Config, nproc: int = 1, calibrate_steps: int = 4) -> Estimate:
    """`tunelab estimate`: the estimate for `cfg`, on its run folder's prepared data when that is current,
    else on data prepared into a temporary folder (the run folder is never written)."""
    check_method(cfg.method, cfg.task)
    tokenizer = load_tokenizer(cfg.model)
    rd = RunDir.for_config(cfg)
    if rd.is_run() and cache.why_rebuild(rd.data, cache.fingerprint_parts(cfg, tokenizer)) is None:
        return run(cfg, prepare(cfg, rd.data, tokenizer), tokenizer, nproc, calibrate_steps)
    with tempfile.TemporaryDirectory(prefix="tunelab-estimate-") as tmp:
        prepared = prepare(cfg, DataDir(Path(tmp)), tokenizer, scratch=True)
    return run(cfg, prepared, tokenizer, nproc, calibrate_steps)

