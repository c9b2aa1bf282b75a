"""Checkpoints in one process: the retry rule, unreadable saves moved aside (never deleted), and
Orbax's after-failure reports muted only around the reads. Across processes: test_multihost.py."""

import gc
import glob
import logging
import os
import sys
import time
from typing import Any

import flax.struct
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ratebp_jax import checkpoint


@flax.struct.dataclass
class State:
    step: Any
    params: Any
    batch_stats: Any
    opt_state: Any


def make_state(step: int, layers: int = 4, size: int = 1000) -> State:
    """A train state whose arrays are a function of ``step`` (random: incompressible)."""
    kernels = np.random.default_rng(step).random((layers, size), np.float32)
    params = {f"layer{i}": {"kernel": kernel} for i, kernel in enumerate(kernels)}
    return State(step=np.array(step, np.int32), params=params, batch_stats={"mean": np.full((3,), step, np.float32)},
                 opt_state=(np.array(step, np.float32),))


def save(directory, steps, **state_args) -> None:
    checkpoints = checkpoint.Checkpoints(directory)
    for step in steps:
        checkpoints.save(make_state(step, **state_args), {"steps_done": step}, is_best=False)
    checkpoints.close()


def contents(directory) -> dict:
    """{relative path: bytes} of every file under directory."""
    return {os.path.relpath(path, directory): open(path, "rb").read()
            for path in glob.glob(os.path.join(directory, "**"), recursive=True) if os.path.isfile(path)}


def truncate_largest_file(step_dir) -> None:
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True) if os.path.isfile(f)]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


def restore(directory):
    state, progress = checkpoint.Checkpoints(directory).restore_latest(make_state(0))
    assert int(state.step) == progress["steps_done"]
    expected = make_state(progress["steps_done"])
    assert all(np.array_equal(state.params[name]["kernel"], expected.params[name]["kernel"]) for name in expected.params)
    return int(state.step)


def test_an_error_that_passes_on_retry_is_transient(tmp_path, monkeypatch, caplog):
    save(tmp_path, [1, 2])
    monkeypatch.setenv(checkpoint.TEST_FAIL_READ, "0:2:once,1:1:always")  # the second entry is another process's
    assert restore(tmp_path) == 2
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"reading checkpoint {tmp_path / 'latest' / '2'} failed once (read failure injected by" in warning
    assert "passed on retry" in warning
    assert sorted(os.listdir(tmp_path)) == ["best", "latest"]  # nothing moved


def test_a_read_that_fails_twice_is_unreadable_and_moved_aside(tmp_path, monkeypatch, caplog):
    save(tmp_path, [1, 2])
    before = contents(tmp_path / "latest" / "2")
    monkeypatch.setenv(checkpoint.TEST_FAIL_READ, "0:2:always")
    checkpoints = checkpoint.Checkpoints(tmp_path)
    state, progress = checkpoints.restore_latest(make_state(0))
    assert int(state.step) == progress["steps_done"] == 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    moved = tmp_path / "unreadable" / "latest_2"
    assert warning == (f"checkpoint {tmp_path / 'latest' / '2'} cannot be read (read failure injected by "
                       f"{checkpoint.TEST_FAIL_READ}); restoring step 1 instead; moved it to {moved}")
    assert contents(moved) == before  # not deleted: moved, byte for byte
    assert sorted(os.listdir(tmp_path / "latest")) == ["1"] and checkpoints.latest.all_steps() == [1]
    # The run saves that step again (Orbax knows it is gone), and a second loss of it keeps both copies.
    checkpoints.save(make_state(2), {"steps_done": 2}, is_best=False)
    checkpoints.close()
    assert checkpoint.Checkpoints(tmp_path).restore_latest(make_state(0))[1]["steps_done"] == 1
    assert sorted(os.listdir(tmp_path / "unreadable")) == ["latest_2", "latest_2.1"]


def test_no_readable_checkpoint_is_one_error_and_nothing_moves(tmp_path, monkeypatch):
    save(tmp_path, [1, 2])
    monkeypatch.setenv(checkpoint.TEST_FAIL_READ, "0:1:always,0:2:always")
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.Checkpoints(tmp_path).restore_latest(make_state(0))
    assert str(error.value) == (f"no checkpoint in {tmp_path / 'latest'} can be read (steps 2, 1; read failure "
                                f"injected by {checkpoint.TEST_FAIL_READ}); move {tmp_path} aside to start "
                                "afresh, or put a readable copy back")
    assert sorted(os.listdir(tmp_path / "latest")) == ["1", "2"] and not os.path.exists(tmp_path / "unreadable")
    assert checkpoint.Checkpoints(tmp_path / "new").restore_latest(make_state(0)) is None


def test_the_test_hook_rejects_a_malformed_value(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint.TEST_FAIL_READ, "0:2")
    with pytest.raises(ValueError, match="expected PROCESS:STEP:once|always"):
        checkpoint.Checkpoints(tmp_path)


@pytest.mark.slow  # writes and truncates a checkpoint of 40 arrays
def test_reports_after_a_failed_read_are_muted_only_around_the_read(tmp_path, monkeypatch, caplog):
    # A truncated checkpoint of 40 arrays: its failed read leaves TensorStore reads in flight, which
    # report "Event loop is closed" through sys.unraisablehook after the failure is raised (the control).
    reports, failed = [], []
    hook = lambda unraisable: reports.append((bool(failed), str(unraisable.exc_value)))
    monkeypatch.setattr(sys, "unraisablehook", hook)
    shape = dict(layers=40, size=50_000)
    save(tmp_path, [1, 2], **shape)
    truncate_largest_file(tmp_path / "latest" / "2")
    assert checkpoint.Checkpoints(tmp_path).restore_latest(make_state(0, **shape))[1]["steps_done"] == 1
    truncate_largest_file(tmp_path / "latest" / "1")  # none readable: the error leaves right after a failed read
    with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint in {tmp_path / 'latest'} can be read"):
        checkpoint.Checkpoints(tmp_path).restore_latest(make_state(0, **shape))
    assert sys.unraisablehook is hook and logging.getLogger("asyncio").filters == []
    time.sleep(0.5)
    gc.collect()  # anything still in flight would report now
    assert reports == [] and not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    [warning] = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert warning.endswith(f"restoring step 1 instead; moved it to {tmp_path / 'unreadable' / 'latest_2'}")

    # The control: the same read, outside the module's scope.
    template = {field: getattr(make_state(0, **shape), field) for field in checkpoint.STATE_FIELDS}
    with pytest.raises(ValueError, match="OUT_OF_RANGE"):
        try:
            ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
                tmp_path / "unreadable" / "latest_2", args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))
        finally:
            failed.append(True)
    time.sleep(0.5)
    gc.collect()
    assert {message for after, message in reports if after} == {"Event loop is closed"}
