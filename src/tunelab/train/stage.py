"""The `train` stage: base model + method + Trainer, validation, early stopping, `best/` and `last/`."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from tunelab.config import Config
from tunelab.core import memory
from tunelab.core.errors import Interrupted
from tunelab.core.ranks import is_main_process, launched, local_world_size, world_size
from tunelab.core.rundir import RunDir, remove_tree
from tunelab.data import Prepared, load_prepared
from tunelab.methods import MethodError, apply_method, describe_trainable, load_kwargs, method_callbacks, param_groups
from tunelab.models import Precision, choose_precision, load_model, load_tokenizer
from tunelab.tasks import TASKS
from tunelab.train import auto, checkpoints, distributed, tracking
from tunelab.train.budget import TimeBudget
from tunelab.train.callbacks import BestCheckpoint, GradientGuard, RunLog, save_model
from tunelab.train.lower_cache import add_lower_hidden, cached_collator
from tunelab.train.render import Renderer, check_batch
from tunelab.train.trainer import TunelabTrainer
from tunelab.train.watchdog import StallWatchdog

log = logging.getLogger(__name__)


def encode(cfg: Config, renderer: Renderer, prepared: Prepared) -> tuple[list[dict], list[dict], dict]:
    """Encode train and validation splits for the task; report truncation; run the supervision guards."""
    task = TASKS[cfg.task]
    tr, st = task.encode(renderer, prepared.splits["train"], "train", prepared.labels)
    va, sv = task.encode(renderer, prepared.splits["validation"], "validation", prepared.labels)
    log.info(f"truncated to data.max_length={cfg.data.max_length}: {st.truncated} of {st.examples} train and "
             f"{sv.truncated} of {sv.examples} validation examples"
             + (f" (first: {', '.join(st.truncated_rows[:3])})" if st.truncated else ""))
    return tr, va, {"truncated": st.truncated, "truncated_validation": sv.truncated}


def training_args(cfg: Config, rd: RunDir, prec: Precision) -> TrainingArguments:
    t = cfg.train
    return TrainingArguments(
        output_dir=str(rd.checkpoints),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr,
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        warmup_steps=t.warmup_ratio, lr_scheduler_type=t.scheduler, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, logging_steps=t.log_every, logging_first_step=True,
        eval_strategy="steps", eval_steps=t.eval_every,
        # Resumable checkpoints; CheckpointMarker rotates them (save_total_limit stays off, see checkpoints.py).
        save_strategy="steps" if t.save_every else "no", save_steps=t.save_every or 500, save_total_limit=None,
        bf16=prec.bf16, fp16=prec.fp16, use_cpu=prec.device == "cpu",
        seed=t.seed, data_seed=t.seed, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=False, ddp_timeout=distributed.DDP_TIMEOUT_S, **tracking.configure(t.report_to, rd, cfg.name),
    )


@dataclass
class TrainResult:
    stats: dict            # what metrics.json `train` holds
    model: torch.nn.Module  # the model as trained (last state)


def run(cfg: Config, rd: RunDir, prepared: Prepared | None = None, tokenizer=None,
        callbacks: Sequence[TrainerCallback] = (), resume: bool = False) -> TrainResult:
    """Fine-tune on the run's prepared data; write `best/`, `last/`, `metrics.jsonl`, `trainable.json`
    and the `train` section of metrics.json. Everything evaluated or exported from an earlier model in
    this folder is removed first. `callbacks` are added to the Trainer's (e.g. a tuning study's pruner).
    Resumable checkpoints go to `checkpoints/` every `train.save_every` steps and on SIGTERM/SIGINT; they
    are removed once training completes (`best/` and `last/` hold what it produced).

    Args:
        resume: continue from the newest complete checkpoint (from step 0 when there is none).

    Raises:
        RenderError: examples with nothing supervised, or an unsupervised end-of-turn token.
        TrainingStopped: a divergence guard fired (the message lists likely causes).
        ResumeError: the checkpoint was saved with another training config or other data.
        Interrupted: SIGTERM/SIGINT stopped training after saving a resumable checkpoint.
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    prepared = prepared if prepared is not None else load_prepared(rd.data)
    # Decided from the data before anything else reads the config (a resumed run decides the same).
    cfg, decided = auto.resolve(cfg, len(prepared.splits["train"]), len(prepared.labels or []), world_size())
    point = checkpoints.resume_point(cfg, rd, prepared.manifest.get("fingerprint")) if resume else None
    with rd.stage("train", fresh=point is None) as entry:
        if point is not None:
            entry["resumed_from"] = point.folder.name
        prec = choose_precision(cfg.train)
        distributed.setup(prec.device)
        check_distributed(cfg)
        torch.set_num_threads(threads(cfg))
        set_seed(cfg.train.seed)
        log.info(f"precision: {prec.reason}")
        renderer = Renderer(tokenizer, cfg)
        train_ex, val_ex, enc_stats = encode(cfg, renderer, prepared)
        val_ex = validation_subset(cfg, val_ex)
        model, about = build_model(cfg, rd, prepared)
        collator = None
        if cfg.method.freeze_below and TASKS[cfg.task].caches_lower_layers:
            train_ex, val_ex, collator = cache_lower_layers(cfg, model, tokenizer, prec, train_ex, val_ex)
            memory.release()   # the frozen layers' activations of that pass
        trainer, best = build_trainer(cfg, rd, model, tokenizer, renderer, prec, train_ex, val_ex, callbacks,
                                      collator=collator)
        trainer.add_callback(checkpoints.NoFinalCheckpoint())
        budget = TimeBudget(cfg.train.time_budget) if cfg.train.time_budget else None
        if budget:
            trainer.add_callback(budget)
        trainer.add_callback(stop := checkpoints.StopOnSignal())
        _mark_checkpoints(cfg, rd, trainer, best, prepared)   # last callback: after everything else saved
        if point is not None:
            trainer.restore_counters(point.marker["counters"])
        with stop.installed():
            trainer.train(resume_from_checkpoint=str(point.folder) if point else None)
        if stop.stopped_by is not None:
            nproc = f" --nproc {world_size()}" if launched() else ""
            raise Interrupted(f"training stopped by {signal.Signals(stop.stopped_by).name} at step "
                              f"{trainer.state.global_step}; a resumable checkpoint is in {rd.checkpoints}. "
                              f"Continue with `tunelab train {rd.path}{nproc} --resume` (or `tunelab run ... --resume`)",
                              stop.stopped_by)
        if budget:
            enc_stats["time_budget"] = budget.decisions
        if decided:
            enc_stats["auto"] = decided
        return finish(cfg, rd, trainer, best, prec, about, enc_stats)


def _mark_checkpoints(cfg: Config, rd: RunDir, trainer: TunelabTrainer, best: BestCheckpoint,
                      prepared: Prepared) -> None:
    about = {"config": checkpoints.config_hash(cfg), "data": prepared.manifest.get("fingerprint")}
    trainer.add_callback(checkpoints.CheckpointMarker(rd, cfg.train.keep_checkpoints,
                                                      lambda: {**about, "counters": trainer.counters()},
                                                      lambda: best.best_step))


def threads(cfg: Config, processes: int | None = None) -> int:
    """torch threads for one process: train.threads, else the machine's cores shared by its `processes`
    (default: the processes of this launch on this machine)."""
    return cfg.train.threads or max(1, (os.cpu_count() or 1) // (processes or local_world_size()))


def check_distributed(cfg: Config) -> None:
    """Refuse what DDP cannot do.

    Raises:
        MethodError: gradual unfreezing in several processes (DDP registers the trainable parameters
            once, when it wraps the model: a layer unfrozen later would train apart in each process).
    """
    if launched() and cfg.method.name == "gradual_unfreeze":
        raise MethodError("method.name=gradual_unfreeze changes which parameters train during training, which DDP "
                          "cannot follow (it registers the trainable parameters once); train it in one process, or "
                          "use method.name: freeze with trainable_layers")


def validation_subset(cfg: Config, val_ex: list[dict]) -> list[dict]:
    """The fixed seeded subset of validation examples the validation loss is computed on (train.eval_examples)."""
    if cfg.train.eval_examples and len(val_ex) > cfg.train.eval_examples:
        keep = sorted(random.Random(cfg.train.seed).sample(range(len(val_ex)), cfg.train.eval_examples))
        val_ex = [val_ex[i] for i in keep]
        log.info(f"validation loss on a fixed seeded subset of {len(val_ex)} validation examples (train.eval_examples)")
    return val_ex


def build_model(cfg: Config, rd: RunDir, prepared: Prepared) -> tuple[torch.nn.Module, dict]:
    """The base model with the method applied; what it trains is logged and written to trainable.json."""
    model = load_model(cfg.model, cfg.task, labels=prepared.labels, **load_kwargs(cfg.method))
    model = apply_method(model, cfg.method, cfg.task)
    about = describe_trainable(model, cfg.method, cfg.train)
    if is_main_process():
        rd.write_trainable(about)
    log.info(f"trainable parameters: {about['trainable']:,} of {about['total']:,} "
             f"({100 * about['trainable'] / about['total']:.2f}%), lr {cfg.train.lr:g}"
             + (f", LoRA scale {about['lora_scale']:g}" if about.get("lora_scale") else ""))
    for w in about.get("warnings", []):
        log.warning(w)
    return model, about


def cache_lower_layers(cfg: Config, model, tokenizer, prec: Precision, train_ex: list[dict], val_ex: list[dict]):
    """method.freeze_below: run the frozen layers once per train/validation example; (train, val, collator)."""
    below, pad = cfg.method.freeze_below, tokenizer.pad_token_id
    train_ex = add_lower_hidden(model, train_ex, below, pad, prec, desc="frozen layers (train)")
    val_ex = add_lower_hidden(model, val_ex, below, pad, prec, desc="frozen layers (validation)")
    return train_ex, val_ex, cached_collator(pad)


def build_trainer(cfg: Config, rd: RunDir, model, tokenizer, renderer: Renderer, prec: Precision,
                  train_ex: list[dict], val_ex: list[dict], callbacks: Sequence[TrainerCallback] = (),
                  collator=None) -> tuple[TunelabTrainer, BestCheckpoint]:
    """Our Trainer with the task's collator (or `collator`) and objective, the guards, metrics.jsonl and `best/`."""
    task = TASKS[cfg.task]
    batching = cfg.train.batching
    if cfg.method.name == "prompt_tuning" and batching != "padded":
        # Virtual tokens are prepended to every row, which a packed row cannot express.
        log.info(f"train.batching={batching} does not fit prompt tuning's virtual tokens: using padded")
        batching = "padded"
    collator = collator or task.collator(tokenizer, batching)
    if task.supervision == "completion":
        sample = train_ex[: cfg.train.batch_size]
        check_batch(collator(sample), renderer.end_ids, len(sample))
    best = BestCheckpoint(rd.best, tokenizer, cfg.train.patience, cfg.train.min_delta)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.method, cfg.train.lr, cfg.train.weight_decay))
    trainer = TunelabTrainer(
        model=model, args=training_args(cfg, rd, prec), train_dataset=train_ex,
        eval_dataset=val_ex, data_collator=collator, processing_class=tokenizer,
        optimizers=(optimizer, None), objective=task.objective, zero_loss_steps=cfg.train.zero_loss_steps,
        callbacks=[RunLog(rd), best, GradientGuard(model), *method_callbacks(model, cfg.method),
                   StallWatchdog(cfg.train.stall_minutes, on_stall=_stall_recorder(rd)), *callbacks])
    best.accelerator = trainer.accelerator
    return trainer, best


def _stall_recorder(rd: RunDir):
    """What the stall watchdog calls before it ends the process: rank 0 records the stall in status.json."""
    if not is_main_process():
        return None
    return lambda message: rd.fail_stage("train", message)


def finish(cfg: Config, rd: RunDir, trainer: TunelabTrainer, best: BestCheckpoint, prec: Precision,
           about: dict, enc_stats: dict) -> TrainResult:
    """Judge the final weights, write `last/` (and `best/` if no validation ran), record the `train` metrics."""
    wall = trainer.wall_seconds()
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    if not evaluated or evaluated[-1] != trainer.state.global_step:
        trainer.evaluate()   # judge the final weights too, so best/ is the best of every state reached
    tokens, supervised = trainer.token_totals()   # summed over every process
    stats = {
        "tokens_per_second": round(tokens / wall, 1),
        "supervised_tokens_per_second": round(supervised / wall, 1),
        "wall_seconds": round(wall, 1), "steps": trainer.state.global_step,
        "best_step": best.best_step, "best_eval_loss": None if best.best_step is None else round(best.best_loss, 5),
        "train_loss": round(trainer.run_loss(), 5), "examples": len(trainer.train_dataset),
        "tokens": tokens, "precision": prec.reason, "trainable_params": about["trainable"],
        "total_params": about["total"], "processes": trainer.args.world_size, **enc_stats,
    }
    save_model(trainer.model, trainer.processing_class, rd.last, step=trainer.state.global_step,
               accelerator=trainer.accelerator)
    if not is_main_process():   # the run folder is rank 0's to write
        return TrainResult(stats, trainer.model)
    if not rd.best.exists():
        shutil.copytree(rd.last, rd.best)
    remove_tree(rd.checkpoints)   # the run is whole: best/ and last/ hold what training produced
    rd.set_metrics("train", stats)
    log.info(f"trained {stats['steps']} steps in {wall:.0f}s ({stats['tokens_per_second']:.0f} tokens/s); "
             f"best validation loss {stats['best_eval_loss']} at step {stats['best_step']}")
    return TrainResult(stats, trainer.model)
