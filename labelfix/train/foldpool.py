"""Fold models trained side by side on the CPU (``labelfix train --folds K --fold-workers W``).

A small model does not keep two CPU threads busy: two processes of one thread each train
two fold models in less time than one process with two threads trains them one after the
other (demo recipe, 2 cores: 1.60x, docs/training.md). :class:`FoldPool` starts W
``spawn`` processes once per cross-fitted run; each takes fold jobs from a queue, trains
them with its share of the threads (``torch.get_num_threads()`` over min(W, K)) and
keeps its decoded images for the next fold of the same run. The driver
(``crossfit.train_folds``) gets every log line, prefixed with the fold, through one
result queue. A caller that trains several runs one after the other (``labelfix demo``:
one per review round) can open one pool for all of them and pass it to
``labelfix.train.train(..., fold_pool=pool)``; ``start()`` launches the processes ahead
of the first run, so that they import torch while the caller does other work.

Failure modes, each tested in tests/test_crossfit.py:

- a fold that raises: the other workers are stopped and the error is raised in the
  driver, as one line for a ``LabelfixError``;
- Ctrl-C: every training worker stops at its own clean point (each fold resumes from its
  last finished epoch) and the driver raises ``TrainingInterrupted``;
- the driver killed outright: each worker notices within a second that its parent is
  gone and exits, so nothing keeps writing into the run directory.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from labelfix.errors import LabelfixError


@dataclass
class FoldJob:
    """One fold model to train: its options (``out`` = the fold's run directory), the
    labels of its round and its split (held-out rows marked 2), the log prefix, the
    cross-fitted run's ``RUN/features`` folder (``--frozen`` embeddings; it also names
    the run whose decoded images a worker keeps), in a ROLE refit round the estimates
    its label table starts from, whether it embeds the images at the end
    (``Trainer(embed=)``), whether it only does that, with the finished model
    (``Trainer.embed_only``), and whether it says which weights it loaded
    (``Trainer(say_weights=)``)."""

    fold: int
    cfg: object
    labelset: object
    split: np.ndarray
    where: str
    features_dir: str
    role_estimates: np.ndarray | None = None
    embed: bool = True
    embed_only: bool = False
    say_weights: bool = True


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:   # the driver is gone: stop writing into its run
            os._exit(1)


def _worker(tasks, results, threads: int, parent: int) -> None:
    """Worker process: train the fold jobs of ``tasks`` until ``None``."""
    import torch

    from labelfix.train.engine import Trainer

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # idle: Ctrl-C is the driver's business
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    images: dict = {}   # decoded images by row, kept for this worker's next fold of the same run
    run = None
    while True:
        job = tasks.get()
        if job is None:
            return
        if job.features_dir != run:   # another run: its rows may be other images
            images, run = {}, job.features_dir
        log = lambda text, where=job.where: results.put(("log", job.fold, f"{where}: {text}"))
        signal.signal(signal.SIGINT, signal.default_int_handler)   # training: stop at a clean point
        try:
            t = Trainer(job.cfg, log=log, labelset=job.labelset, split=job.split, features_dir=Path(job.features_dir),
                        image_cache=images, role_estimates=job.role_estimates, embed=job.embed,
                        say_weights=job.say_weights)
            t.embed_only() if job.embed_only else t.fit()
            results.put(("done", job.fold, None))
        except LabelfixError as err:
            results.put(("error", job.fold, (type(err).__name__, str(err))))
            return
        except BaseException:   # a bug: its traceback, not a silent dead worker
            results.put(("error", job.fold, ("crash", traceback.format_exc())))
            return
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _ctrl_c_as_flag():
    """While the driver reads the workers' queue, Ctrl-C sets an event instead of raising
    KeyboardInterrupt: an exception in the middle of reading a message would leave the
    pipe mid-message and the next read would block for ever. (Outside the main thread,
    where handlers cannot be set, the event never fires and Ctrl-C reaches the workers
    from the terminal.)"""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class FoldPool:
    """``workers`` fold-training processes (``close()`` or leaving a ``with`` block ends
    them), for one cross-fitted run or several in turn.

    ``run(jobs, say)`` trains the jobs, at most ``workers`` at a time, passing every log
    line to ``say``; it returns when all are done, or raises (module docstring); after a
    failure the pool is closed. ``start()`` launches every process now instead of at the
    first ``run``."""

    def __init__(self, workers: int, folds: int):
        import torch

        self.workers = min(int(workers), int(folds))   # never more processes than folds
        self.threads = max(1, torch.get_num_threads() // self.workers)
        self._ctx = mp.get_context("spawn")
        self._tasks = self._ctx.Queue()
        self._results = self._ctx.Queue()
        self._procs: list = []
        self._closed = False

    def __enter__(self) -> "FoldPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close(kill=exc[0] is not None)

    def start(self) -> "FoldPool":
        """Launch every worker process now (each imports torch and the trainer once)."""
        self._start(self.workers)
        return self

    def check_open(self) -> None:
        if self._closed:
            raise RuntimeError("FoldPool: closed (a fold failed or close() was called); open a new pool")

    def _start(self, n: int) -> None:
        self.check_open()
        while len(self._procs) < min(n, self.workers):
            p = self._ctx.Process(target=_worker, args=(self._tasks, self._results, self.threads, os.getpid()),
                                  daemon=True)
            p.start()
            self._procs.append(p)

    def run(self, jobs: list[FoldJob], say: Callable[[str], None]) -> None:
        if not jobs:
            return
        self._start(len(jobs))
        for job in jobs:
            self._tasks.put(job)
        pending = {job.fold for job in jobs}
        with _ctrl_c_as_flag() as stop:
            while pending:
                if stop.is_set():
                    self._interrupt(pending)
                try:
                    kind, fold, payload = self._results.get(timeout=0.5)
                except queue_mod.Empty:
                    dead = [p for p in self._procs if p.exitcode is not None]
                    if dead:
                        self.close(kill=True)
                        raise LabelfixError(f"a fold training process exited with code {dead[0].exitcode} while "
                                            f"folds {sorted(pending)} were unfinished (its error is above; a script "
                                            f"that trains with fold_workers > 1 needs the if __name__ == "
                                            f"'__main__': guard); continue with --resume")
                    continue
                if kind == "log":
                    say(payload)
                elif kind == "done":
                    pending.discard(fold)
                else:
                    self._fail(payload)

    def _fail(self, payload) -> None:
        name, text = payload
        self.close(kill=True)
        if name == "TrainingInterrupted":
            from labelfix.train.checkpoint import TrainingInterrupted

            raise TrainingInterrupted(text)
        if name == "crash":
            raise RuntimeError(f"a fold training process failed:\n{text}")
        raise LabelfixError(text)

    def _interrupt(self, pending: set) -> None:
        """Ctrl-C: the terminal sends it to the workers too; a signal sent to the driver
        alone is passed on after 2 s. Training workers stop at a clean point."""
        from labelfix.train.checkpoint import TrainingInterrupted

        folds = sorted(pending)

        def training():
            return [p for p in self._procs if p.exitcode is None]

        deadline = time.monotonic() + 2.0
        while training() and time.monotonic() < deadline and not self._settled(pending):
            time.sleep(0.1)
        for p in training():
            try:
                os.kill(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 60.0
        while training() and time.monotonic() < deadline and not self._settled(pending):
            time.sleep(0.1)
        self.close(kill=True)
        raise TrainingInterrupted(f"interrupted while training folds {folds}; every fold model keeps "
                                  f"its last finished epoch. Continue with --resume") from None

    def _settled(self, pending: set) -> bool:
        """Drain the result queue; True once every pending fold reported (done or stopped)."""
        while True:
            try:
                kind, fold, _ = self._results.get_nowait()
            except (queue_mod.Empty, OSError, ValueError):
                return not pending
            if kind != "log":
                pending.discard(fold)

    def close(self, kill: bool = False) -> None:
        """Stop the workers: ``kill`` at once, else after their current job."""
        if self._closed:
            return
        self._closed = True
        if kill:
            for p in self._procs:
                if p.exitcode is None:
                    p.kill()
        else:
            for _ in self._procs:
                self._tasks.put(None)
        for p in self._procs:
            p.join(timeout=None if not kill else 10.0)
        self._procs = []
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()
