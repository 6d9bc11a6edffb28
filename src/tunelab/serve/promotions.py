"""A running server follows `tunelab retrain`'s promotions without a restart.

A thread polls the `promoted.json` of every served run folder (monitor/deployment.py holds the
contract). When one changes, it loads the promoted run off the event loop and the engine's thread, then
swaps it in under the same model id; requests already queued finish on the model they were queued for
(the engine batches by served object). A promoted run that fails to load is logged and the old model
keeps answering.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from tunelab.core.rundir import RunDir
from tunelab.export.bundle import is_export

log = logging.getLogger(__name__)
POLL_S = 1.0   # a stat() per served run per second: cheap, and a promotion shows within about a second


class PromotionWatcher:
    """Swaps a served model when its run folder's promoted.json changes."""

    def __init__(self, state, paths: list[Path], max_batch: int, allow_incomplete: bool = False,
                 on_swap=None):
        self.state, self.max_batch, self.allow_incomplete, self.on_swap = state, max_batch, allow_incomplete, on_swap
        self.roots = {RunDir(p).name: RunDir(p) for p in paths if not is_export(p)}
        self.seen = {name: self._stamp(rd) for name, rd in self.roots.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tunelab-promotions", daemon=True)

    @staticmethod
    def _stamp(rd: RunDir):
        try:
            st = rd.promoted_path.stat()
            return st.st_mtime_ns, st.st_size
        except FileNotFoundError:
            return None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.check()

    def check(self) -> list[str]:
        """Reload every served run whose promoted.json changed since the last check; returns their ids."""
        changed = []
        for name, rd in self.roots.items():
            stamp = self._stamp(rd)
            if stamp != self.seen[name]:
                self.seen[name] = stamp
                if self._swap(name, rd):
                    changed.append(name)
        return changed

    def _swap(self, name: str, rd: RunDir) -> bool:
        from tunelab.serve.served import ServedModel, answering

        old = self.state.models.get(name)
        try:
            _, predictor = answering(rd.path, self.allow_incomplete)
            new = ServedModel(name, predictor, self.max_batch, parent=old.parent if old else None)
        except Exception as e:   # a broken promotion must not take the served model down
            log.error(f"{name}: could not load the promoted run ({e}); {old.root if old else 'nothing'} keeps answering")
            return False
        self.state.models = {**self.state.models, name: new}   # one assignment: handlers see old or new, never half
        self.state.metrics.info.labels(new.id, new.parent or "", new.task, new.serving).set(1)
        log.info(f"{name}: now answering with {new.root} (promoted; was {old.root if old else 'not loaded'})")
        if self.on_swap is not None:
            self.on_swap(name)
        return True
