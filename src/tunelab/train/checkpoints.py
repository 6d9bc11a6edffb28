"""Resumable training: checkpoints that count only when complete, stop-and-save on SIGTERM/SIGINT, resume.

The Trainer writes the checkpoints (`save_strategy="steps"`: weights or adapter, optimizer, scheduler,
RNG states, and `trainer_state.json` with the step that fixes the data position) and resumes from
them (`train(resume_from_checkpoint=...)`, which skips the batches already trained on). tunelab adds:

- `CheckpointMarker`, the last callback: after the Trainer saved a checkpoint it writes a marker
  listing every file's size, so a checkpoint cut short by a kill (no marker, or files that do not
  match it) is never resumed from;
- rotation to `train.keep_checkpoints` after the marker. The stock `save_total_limit` rotation runs
  before the newest checkpoint is complete and deletes files in any order: with one checkpoint kept, a
  kill in the middle could leave none whole, or one that looks whole without its optimizer state;
- `best/` as it was at each checkpoint (hard links, no extra space) and the length of metrics.jsonl,
  so a resumed run continues the log and the early-stopping state exactly where the checkpoint was;
- `resume_point`: the newest complete checkpoint, refused when the config or the data changed since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from transformers import TrainerCallback

from tunelab.config import Config, differences, dump_config
from tunelab.core.errors import UserError
from tunelab.core.ranks import is_main_process, launched, world_size
from tunelab.core.rundir import RunDir, is_complete_model, model_marker, remove_tree
from tunelab.train import distributed

log = logging.getLogger(__name__)

# Config keys a resumed run may change: they alter neither the prepared data nor the optimisation path.
MAY_CHANGE = ("runs_dir", "base_dir", "eval", "tune", "serve", "monitor", "train.threads", "train.report_to",
              "train.save_every", "train.keep_checkpoints")


class ResumeError(UserError):
    """A run that cannot be resumed as asked; the message says what changed or what is missing."""


def training_identity(raw: dict) -> dict:
    """The part of a dumped config that decides what training does (everything but MAY_CHANGE)."""
    out = json.loads(json.dumps(raw))
    out.pop("_meta", None)
    for key in MAY_CHANGE:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return out


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(training_identity(dump_config(cfg)), sort_keys=True).encode()).hexdigest()[:16]


def config_changes(rd: RunDir, cfg: Config) -> list[str]:
    """What differs, for training, between the run's config.yaml and `cfg` (one line per dotted key)."""
    return differences(training_identity(rd.raw_config()), training_identity(dump_config(cfg)))


def refuse_changes(rd: RunDir, what: str, changes: list[str], hint: str) -> None:
    """Raise ResumeError listing `changes` (nothing when there are none)."""
    if changes:
        listing = "\n".join(f"  - {c}" for c in changes[:20]) + (f"\n  ... and {len(changes) - 20} more"
                                                                   if len(changes) > 20 else "")
        raise ResumeError(f"cannot resume {rd.path}: {what} changed since it was started:\n{listing}\n{hint}")


# ---------------------------------------------------------------- writing checkpoints


class CheckpointMarker(TrainerCallback):
    """Mark each checkpoint complete once the Trainer saved it (this must be the last callback), keep
    `best/` beside it, then delete all but the `keep` newest complete checkpoints.

    Args:
        about: what the marker records beyond the step (config and data fingerprints, counters).
        best_step: the step `best/` holds now (None before the first validation).
    """

    def __init__(self, rd: RunDir, keep: int, about: Callable[[], dict], best_step: Callable[[], int | None]):
        self.rd, self.keep, self.about, self.best_step = rd, keep, about, best_step

    def on_save(self, args, state, control, **kwargs):
        # Each process writes its own RNG state into the checkpoint: rank 0 lists the files once all have.
        distributed.barrier()
        about = self.about()   # may be a collective (token counts summed over processes): before the rank test
        if not state.is_world_process_zero:
            return
        folder = self.rd.checkpoint_path(state.global_step)
        if not folder.is_dir():
            return
        best_step = self.best_step()
        if best_step is not None and is_complete_model(self.rd.best):
            _link_tree(self.rd.best, self.rd.checkpoint_best(folder))
        self.rd.mark_checkpoint(folder, {"step": state.global_step, "log_lines": self.rd.log_lines(),
                                         "best_step": best_step, "processes": world_size(), **about})
        complete = [(s, p) for s, p in self.rd.checkpoint_folders() if self.rd.checkpoint_marker(p)]
        for _, old in complete[:-self.keep]:
            self.rd.remove_checkpoint(old)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder as hard links (files under best/ are never rewritten in place: a new best/ is a
    new folder), falling back to copies where the file system has no hard links."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    remove_tree(dst)
    shutil.copytree(src, dst, copy_function=link)


class NoFinalCheckpoint(TrainerCallback):
    """The Trainer also saves a checkpoint at the last step; the run completes right after it and
    `best/` and `last/` replace it, so it would only cost the time of writing the optimizer state
    (and, in several processes, have each write its RNG state). Must come before StopOnSignal, whose
    checkpoint of a stopped run is kept."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False


class StopOnSignal(TrainerCallback):
    """SIGTERM or SIGINT during training: finish the current step, save a resumable checkpoint, stop.

    A second signal stops at once (KeyboardInterrupt, no checkpoint). Handlers can only be installed
    in the main thread; elsewhere (a server running training in a thread) signals keep their meaning.
    In several processes the signal reaches each one at its own moment (the launcher passes it on):
    they agree after every step, so all stop after the same one and save one checkpoint together.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None     # the signal this process received
        self.stopped_by: int | None = None   # the signal that stopped training (in any process)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning(f"{signal.Signals(signum).name} received: saving a resumable checkpoint after this step, "
                    "then stopping (send it again to stop at once, without a checkpoint)")

    def _agreed(self) -> int | None:
        if not launched():
            return self.received
        counts = distributed.sum_across([float(self.received == s) for s in self.SIGNALS])
        return next((s for s, n in zip(self.SIGNALS, counts) if n), None)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_by is None:
            self.stopped_by = self._agreed()
        if self.stopped_by is not None:
            control.should_save = True
            control.should_training_stop = True


# ---------------------------------------------------------------- resuming


@dataclass
class ResumePoint:
    folder: Path
    marker: dict

    @property
    def step(self) -> int:
        return int(self.marker["step"])


def resume_point(cfg: Config, rd: RunDir, data_fingerprint: str | None) -> ResumePoint | None:
    """The newest complete checkpoint of `rd`, with the run folder set back to its moment: newer and
    incomplete checkpoints removed, metrics.jsonl cut back to its length, `best/` as it was then.
    None when no complete checkpoint exists (training starts again from step 0). In several
    processes rank 0 sets the folder back while the others wait, then they read which one it kept.

    Raises:
        ResumeError: the checkpoint was saved with another training config, other prepared data or
            another number of processes.
    """
    with distributed.main_first():
        point = _newest_complete(rd, write=is_main_process())
        if point is not None:
            _refuse_other_run(cfg, rd, point, data_fingerprint)
            if is_main_process():
                dropped = rd.truncate_log(point.marker["log_lines"])
                _restore_best(rd, point)
                log.info(f"resuming from {point.folder.name} (step {point.step}); {dropped} log line(s) written "
                         "after it removed from metrics.jsonl")
    return point


def _newest_complete(rd: RunDir, write: bool) -> ResumePoint | None:
    """The newest checkpoint whose marker matches its files; with `write`, the others newer than it
    (and every incomplete one) are removed."""
    point = None
    for step, folder in reversed(rd.checkpoint_folders()):
        marker = rd.checkpoint_marker(folder)
        if marker is not None:
            point = ResumePoint(folder, marker)
            break
        if write:
            log.warning(f"skipping {folder.name}: incomplete (its process was stopped while saving it)")
    if write:
        for step, folder in rd.checkpoint_folders():
            if point is None or step > point.step or rd.checkpoint_marker(folder) is None:
                rd.remove_checkpoint(folder)
    if point is None and write:
        log.info(f"no complete checkpoint in {rd.checkpoints}: training starts again from step 0")
    return point


def _refuse_other_run(cfg: Config, rd: RunDir, point: ResumePoint, data_fingerprint: str | None) -> None:
    if point.marker.get("config") != config_hash(cfg):
        refuse_changes(rd, "the training config", config_changes(rd, cfg) or
                       [f"{point.folder.name} was saved with another config than {rd.config_path} holds"],
                       "resume with the config the run was made with, or start a new run (--overwrite)")
    if point.marker.get("data") != data_fingerprint:
        refuse_changes(rd, "the prepared data", [f"fingerprint {point.marker.get('data')} -> {data_fingerprint}"],
                       "resume with the data the run was trained on, or start a new run (--overwrite)")
    saved_with = point.marker.get("processes", 1)
    if saved_with != world_size():
        # train.batch_size is per process: another count changes the batches, and each process's RNG state is saved.
        refuse_changes(rd, "the number of training processes", [f"{saved_with} -> {world_size()}"],
                       f"resume with {'--nproc ' + str(saved_with) if saved_with > 1 else 'one process (no --nproc)'}, "
                       "or start a new run (--overwrite)")


def _restore_best(rd: RunDir, point: ResumePoint) -> None:
    """Put back `best/` as it was when the checkpoint was saved (a later validation may have replaced it)."""
    want = point.marker.get("best_step")
    if want is None:
        remove_tree(rd.best)
        return
    if is_complete_model(rd.best) and model_marker(rd.best).get("step") == want:
        return
    saved = rd.checkpoint_best(point.folder)
    if not is_complete_model(saved):
        raise ResumeError(f"cannot resume from {point.folder}: best/ of step {want} was not kept beside it "
                          f"({saved} is missing); train again with --overwrite")
    tmp = rd.best.with_name(f".{rd.best.name}.partial-{os.getpid()}")
    _link_tree(saved, tmp)
    remove_tree(rd.best)
    os.replace(tmp, rd.best)


def check_data_unchanged(cfg: Config, rd: RunDir, tokenizer) -> None:
    """Before a resume re-runs `prepare`: refuse when the data the run trained on (its input files, the
    data config, the tokenizer) changed, since preparing it again would discard the training.

    Raises:
        ResumeError: the differences, one per line.
    """
    from tunelab.data import cache   # lazy: the data package is only needed when resuming

    if rd.stage_state("prepare") != "complete" or rd.stage_state("train") is None:
        return   # nothing was trained on the old data: preparing it again loses nothing
    old = rd.data.manifest().get("fingerprint_parts") or {}
    refuse_changes(rd, "the data", cache.differences_of_parts(old, cache.fingerprint_parts(cfg, tokenizer)),
                   "resume with the data the run was trained on, or start a new run (--overwrite)")
