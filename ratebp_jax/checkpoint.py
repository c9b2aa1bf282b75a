"""Orbax checkpoints of a training run: the latest two, and the best by test accuracy.

    WORKDIR/checkpoints/latest/STEP/{state, progress}   every save; the newest two kept
    WORKDIR/checkpoints/best/STEP/{state, progress}     when test accuracy improves; one kept

``state`` is the train state's arrays ({"step", "params", "batch_stats",
"opt_state"}); ``progress`` is a small JSON dict (epochs done, best accuracy,
training time so far) so that a rerun resumes where the last save left off.

With several processes every process calls ``save`` and ``restore_*`` with the
same arguments; Orbax writes one directory (the arrays are replicated: the
primary process writes them) and reads it in every process.

A checkpoint that cannot be read (a file truncated by a full disk or a killed
copy) is reported in one warning and deleted, and the one before it is
restored; the run then recomputes the lost steps, with the same result.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state")


class CheckpointError(RuntimeError):
    """A run has checkpoints, but none of them can be read."""


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
    # Both managers save the same step at an epoch end: with several processes their barriers
    # (named after the step) must have distinct prefixes, or the second save finds the first's.
    multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=os.path.basename(directory))
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, multiprocessing_options=multiprocessing))


def _first_line(error: Exception, limit: int = 160) -> str:
    return str(error).split("\n")[0][:limit]


def _mute_the_aftermath_of_failed_reads() -> None:
    """After a failed restore, the TensorStore reads still in flight complete into Orbax's closed
    event loop: each reports "Event loop is closed" through sys.unraisablehook (a traceback), and
    asyncio logs the unretrieved task errors. All of it repeats the failure the caller reports
    in one line, so these two messages (only) are muted, from the first restore on (a read can
    land before the failure reaches us)."""
    previous = sys.unraisablehook
    if getattr(previous, "mutes_closed_loop", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    hook.mutes_closed_loop = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(lambda record: "exception was never retrieved" not in record.getMessage())


class Checkpoints:
    """Saves and restores (state, progress) pairs under ``directory``."""

    def __init__(self, directory: str):
        directory = os.path.abspath(directory)
        self.directory = directory
        self.latest = _manager(os.path.join(directory, "latest"), keep=2)  # two: the older is the fallback
        self.best = _manager(os.path.join(directory, "best"), keep=1)

    def save(self, state: Any, progress: dict, *, is_best: bool) -> None:
        """Saves an unreplicated train state at state.step (and as the best, if is_best)."""
        arrays = {field: getattr(state, field) for field in STATE_FIELDS}
        step = int(state.step)
        for manager in (self.latest, self.best) if is_best else (self.latest,):
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                       progress=ocp.args.JsonSave(progress)))

    def restore_latest(self, state: Any) -> tuple[Any, dict] | None:
        """(state, progress) of the newest readable save, with ``state`` as the template; None if none.

        Raises CheckpointError (naming the directory and what to do) if there
        are saves but none can be read.
        """
        return self._restore(self.latest, state)

    def restore_best(self, state: Any) -> tuple[Any, dict] | None:
        return self._restore(self.best, state)

    def _restore(self, manager: ocp.CheckpointManager, state: Any) -> tuple[Any, dict] | None:
        # NumPy templates: every process reads the whole (replicated) arrays; and a failed read then
        # raises TensorStore's ValueError, not the bare Exception of Orbax's jax.Array path.
        template = jax.tree.map(lambda x: np.empty(np.shape(x), getattr(x, "dtype", None) or np.asarray(x).dtype),
                                {field: getattr(state, field) for field in STATE_FIELDS})
        args = ocp.args.Composite(state=ocp.args.StandardRestore(template), progress=ocp.args.JsonRestore())
        steps, unreadable = sorted(manager.all_steps(), reverse=True), []
        if not steps:
            return None
        _mute_the_aftermath_of_failed_reads()
        for step in steps:
            try:
                restored = manager.restore(step, args=args)
            except (ValueError, OSError) as error:  # TensorStore's read errors are ValueErrors, as are JSON's
                unreadable.append((step, _first_line(error)))
                continue
            for bad, reason in unreadable:
                if jax.process_index() == 0:
                    absl_logging.warning("checkpoint %s cannot be read (%s); resuming from step %d instead, "
                                         "and deleting it", manager.directory / str(bad), reason, step)
                manager.delete(bad)  # the rerun saves this step again
            return state.replace(**restored["state"]), dict(restored["progress"])
        raise CheckpointError(
            f"no checkpoint in {manager.directory} can be read (steps {', '.join(map(str, steps))}; "
            f"{unreadable[0][1]}); move {self.directory} aside to start afresh, or put a readable copy back")

    def close(self) -> None:
        """Waits for pending saves."""
        self.latest.close()
        self.best.close()
