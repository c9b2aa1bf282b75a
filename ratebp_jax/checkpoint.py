"""Orbax checkpoints of a training run: the latest one, and the best by test accuracy.

    WORKDIR/checkpoints/latest/STEP/{state, progress}   every save; one kept
    WORKDIR/checkpoints/best/STEP/{state, progress}     when test accuracy improves; one kept

``state`` is the train state's arrays ({"step", "params", "batch_stats",
"opt_state"}); ``progress`` is a small JSON dict (epochs done, best accuracy,
training time so far) so that a rerun resumes where the last save left off.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state")


def _manager(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


class Checkpoints:
    """Saves and restores (state, progress) pairs under ``directory``."""

    def __init__(self, directory: str):
        directory = os.path.abspath(directory)
        self.latest = _manager(os.path.join(directory, "latest"))
        self.best = _manager(os.path.join(directory, "best"))

    def save(self, state: Any, progress: dict, *, is_best: bool) -> None:
        """Saves an unreplicated train state at state.step (and as the best, if is_best)."""
        arrays = {field: getattr(state, field) for field in STATE_FIELDS}
        step = int(state.step)
        for manager in (self.latest, self.best) if is_best else (self.latest,):
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                       progress=ocp.args.JsonSave(progress)))

    def restore_latest(self, state: Any) -> tuple[Any, dict] | None:
        """(state, progress) of the latest save, with ``state`` as the template; None if none."""
        return self._restore(self.latest, state)

    def restore_best(self, state: Any) -> tuple[Any, dict] | None:
        return self._restore(self.best, state)

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, state: Any) -> tuple[Any, dict] | None:
        step = manager.latest_step()
        if step is None:
            return None
        template = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                {field: getattr(state, field) for field in STATE_FIELDS})
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template),
                                                                 progress=ocp.args.JsonRestore()))
        return state.replace(**restored["state"]), dict(restored["progress"])

    def close(self) -> None:
        """Waits for pending saves."""
        self.latest.close()
        self.best.close()
