"""Orbax checkpoints of a training run: the latest two, and the best by test accuracy.

    WORKDIR/checkpoints/latest/STEP/{state, progress}   every save; the newest two kept
    WORKDIR/checkpoints/best/STEP/{state, progress}     when test accuracy improves; one kept
    WORKDIR/checkpoints/unreadable/{latest,best}_STEP   checkpoints found unreadable, moved aside

``state`` is the train state's arrays ({"step", "params", "batch_stats",
"opt_state"}); ``progress`` is a small JSON dict (epochs done, best accuracy,
training time so far) so that a rerun resumes where the last save left off.

With several processes every process calls ``save`` and ``restore_*`` with the
same arguments; Orbax writes one directory (the arrays are replicated: the
primary process writes them) and every process reads it. Which step to restore
is process 0's decision: it reads the saves newest first, stops at the first it
can read, and sends that step to the others (``multihost_utils``), which read
the same step. If one of them cannot (after its retry), every process raises
CheckpointError (one line), so that none waits for the others forever: the step
was readable in process 0, so the processes see different files, which no
fallback to an older step would mend. With one process the same happens
without the broadcast.

Unreadable: a read that fails (ValueError or OSError: TensorStore's, JSON's and
the file system's errors) is retried once; if the retry fails too, the
checkpoint is unreadable. An error that passes on retry is transient (one
warning) and not taken for corruption. Process 0 moves each unreadable
checkpoint newer than the restored one into ``unreadable/``, which Orbax does
not scan, with a one-line warning naming both places; nothing is deleted. The
run then recomputes the lost steps, with the same result. If no save can be
read, nothing is moved and restore raises CheckpointError.

Test hook: RATEBP_JAX_TEST_FAIL_READ="PROCESS:STEP:once" (or ":always"; entries
comma-separated) makes this module's reads of STEP in process PROCESS raise an
OSError, on the first read only (a transient error) or on every read.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state")
TEST_FAIL_READ = "RATEBP_JAX_TEST_FAIL_READ"
READ_ERRORS = (ValueError, OSError)  # TensorStore's read errors are ValueErrors, as are JSON's
NO_SAVES, NONE_READABLE = -1, -2  # process 0's decision when it names no step


class CheckpointError(RuntimeError):
    """A run has checkpoints, but none can be read, or a process cannot read the one process 0 restores."""


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
    # Both managers save the same step at an epoch end: with several processes their barriers
    # (named after the step) must have distinct prefixes, or the second save finds the first's.
    multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=os.path.basename(directory))
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, multiprocessing_options=multiprocessing))


def _reader() -> ocp.Checkpointer:
    """A checkpointer of this process alone: Orbax's restore ends in a barrier of the processes that
    share it, and process 0 reads steps the others do not."""
    me = jax.process_index()
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(), multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def _step_path(manager: ocp.CheckpointManager, step: int):
    return ocp.step.build_step_path(manager.directory, ocp.step.standard_name_format(), step)


def _first_line(error: Exception, limit: int = 160) -> str:
    return str(error).split("\n")[0][:limit]


def _injected_failures(spec: str, process: int) -> dict[int, float]:
    """{step: reads left to fail} in ``process``, from the test hook's value (module docstring)."""
    failures = {}
    for entry in filter(None, spec.split(",")):
        try:
            index, step, times = entry.split(":")
            failures_left = {"once": 1, "always": math.inf}[times]
            if int(index) == process:
                failures[int(step)] = failures_left
        except (ValueError, KeyError):
            raise ValueError(f"{TEST_FAIL_READ}={spec!r}: expected PROCESS:STEP:once|always") from None
    return failures


def _from_process_zero(value: int) -> int:
    """Process 0's ``value``, in every process."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _processes_where(flag: bool) -> list[int]:
    """The indices of the processes whose ``flag`` is True, in every process."""
    if jax.process_count() == 1:
        return [0] if flag else []
    return [int(i) for i in np.flatnonzero(multihost_utils.process_allgather(np.int32(flag)))]


class _MutedReadAftermath(contextlib.AbstractContextManager):
    """While in use, mutes what a failed Orbax read reports after it has failed.

    When a read fails, the TensorStore reads still in flight complete into
    Orbax's closed event loop: each reports "Event loop is closed" through
    sys.unraisablehook (a traceback on stderr), up to tens of milliseconds after
    the failure was raised, and asyncio logs "exception was never retrieved" for
    tasks it dropped. Both repeat the failure that the caller reports in one
    line. Inside ``with`` these two messages (only) are muted; ``drain()``, called
    after each failure, waits until they stop arriving, so that none lands after
    the hooks are put back on exit.
    """

    def __init__(self, quiet_s: float = 0.1, limit_s: float = 5.0):
        self.quiet_s, self.limit_s, self.muted = quiet_s, limit_s, 0

    def __enter__(self) -> _MutedReadAftermath:
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._hook
        logging.getLogger("asyncio").addFilter(self._filter)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.unraisablehook = self._previous_hook
        logging.getLogger("asyncio").removeFilter(self._filter)

    def _hook(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            self.muted += 1
        else:
            self._previous_hook(unraisable)

    def _filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" in record.getMessage():
            self.muted += 1
            return False
        return True

    def drain(self) -> None:
        """Returns once a quiet_s passes without a muted report (at most limit_s)."""
        deadline = time.monotonic() + self.limit_s
        while True:
            seen = self.muted
            gc.collect()  # asyncio reports a task's unretrieved error when the task is collected
            time.sleep(self.quiet_s)
            if self.muted == seen or time.monotonic() > deadline:
                return


class Checkpoints:
    """Saves and restores (state, progress) pairs under ``directory``."""

    def __init__(self, directory: str):
        directory = os.path.abspath(directory)
        self.directory = directory
        self.latest = _manager(os.path.join(directory, "latest"), keep=2)  # two: the older is the fallback
        self.best = _manager(os.path.join(directory, "best"), keep=1)
        self._failures_left = _injected_failures(os.environ.get(TEST_FAIL_READ, ""), jax.process_index())

    def save(self, state: Any, progress: dict, *, is_best: bool) -> None:
        """Saves an unreplicated train state at state.step (and as the best, if is_best)."""
        arrays = {field: getattr(state, field) for field in STATE_FIELDS}
        step = int(state.step)
        for manager in (self.latest, self.best) if is_best else (self.latest,):
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                       progress=ocp.args.JsonSave(progress)))

    def restore_latest(self, state: Any) -> tuple[Any, dict] | None:
        """(state, progress) of the newest readable save, with ``state`` as the template; None if none.

        Every process restores the same step (module docstring). Raises
        CheckpointError (naming the directory and what to do) if there are
        saves but none can be read, or if some process cannot read the one
        that process 0 can.
        """
        return self._restore(self.latest, state)

    def restore_best(self, state: Any) -> tuple[Any, dict] | None:
        return self._restore(self.best, state)

    def _read(self, reader: ocp.Checkpointer, manager: ocp.CheckpointManager, step: int,
              args: ocp.args.Composite) -> tuple[Any, str | None]:
        """(restored, None), or (None, reason) if the read fails, and fails again on the one retry."""
        path, errors = _step_path(manager, step), []
        with _MutedReadAftermath() as muted:
            for _ in range(2):
                try:
                    if self._failures_left.get(step, 0) > 0:
                        self._failures_left[step] -= 1
                        raise OSError(f"read failure injected by {TEST_FAIL_READ}")
                    restored = reader.restore(path, args=args)
                except READ_ERRORS as error:
                    errors.append(_first_line(error))
                    muted.drain()  # also a pause before the retry
                    continue
                if errors:
                    absl_logging.warning("reading checkpoint %s failed once (%s) and passed on retry: a transient "
                                         "error, not corruption", path, errors[0])
                return restored, None
        return None, errors[-1]

    def _restore(self, manager: ocp.CheckpointManager, state: Any) -> tuple[Any, dict] | None:
        # NumPy templates: every process reads the whole (replicated) arrays; and a failed read then
        # raises TensorStore's ValueError, not the bare Exception of Orbax's jax.Array path.
        template = jax.tree.map(lambda x: np.empty(np.shape(x), getattr(x, "dtype", None) or np.asarray(x).dtype),
                                {field: getattr(state, field) for field in STATE_FIELDS})
        args = ocp.args.Composite(state=ocp.args.StandardRestore(template), progress=ocp.args.JsonRestore())
        leader = jax.process_index() == 0
        steps = sorted(manager.all_steps(), reverse=True)
        restored, reason, unreadable, decision = None, None, [], NONE_READABLE if steps else NO_SAVES
        with contextlib.closing(_reader()) as reader:
            for step in steps if leader else ():
                restored, reason = self._read(reader, manager, step, args)
                if restored is not None:
                    decision = step
                    break
                unreadable.append((step, reason))
            chosen = _from_process_zero(decision)
            if chosen == NO_SAVES:
                return None
            if chosen == NONE_READABLE:
                detail = f"steps {', '.join(map(str, steps))}; {unreadable[0][1]}" if leader else "see process 0"
                raise CheckpointError(f"no checkpoint in {manager.directory} can be read ({detail}); move "
                                      f"{self.directory} aside to start afresh, or put a readable copy back")
            if not leader:
                restored, reason = self._read(reader, manager, chosen, args)
        for step, step_reason in unreadable:  # process 0 only, after the agreement; the rerun saves them again
            target = self._move_aside(manager, step)
            absl_logging.warning("checkpoint %s cannot be read (%s); restoring step %d instead; moved it to %s",
                                 _step_path(manager, step), step_reason, chosen, target)
        failed = _processes_where(restored is None)  # also waits for process 0's moves
        manager.reload()  # forgets the steps moved aside
        if failed:
            mine = f" ({reason})" if restored is None else ""
            raise CheckpointError(
                f"checkpoint {_step_path(manager, chosen)} cannot be read in process {', '.join(map(str, failed))}"
                f"{mine}, though process 0 restores it; check that every process sees the same files, then rerun")
        return state.replace(**restored["state"]), dict(restored["progress"])

    def _move_aside(self, manager: ocp.CheckpointManager, step: int) -> str:
        """Moves a step's directory to unreadable/NAME_STEP (or NAME_STEP.1, .2, ... if taken); the new path."""
        directory = os.path.join(self.directory, "unreadable")
        os.makedirs(directory, exist_ok=True)
        base = os.path.join(directory, f"{os.path.basename(manager.directory)}_{step}")
        target, taken = base, 0
        while os.path.exists(target):
            taken += 1
            target = f"{base}.{taken}"
        os.rename(_step_path(manager, step), target)
        return target

    def close(self) -> None:
        """Waits for pending saves."""
        self.latest.close()
        self.best.close()
