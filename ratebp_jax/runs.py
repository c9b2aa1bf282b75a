"""A run's workdir is its record: the config it was made with, its history, one run at a time.

    WORKDIR/config.json      the resolved config, written at the first start (ConfigDict.to_json)
    WORKDIR/history.jsonl    one JSON line per start: time, command line, code version, packages, devices
    WORKDIR/run.lock         held (flock) by process 0 of the run that trains in WORKDIR
    WORKDIR/checkpoints/, TensorBoard events, results.json   (ratebp_jax.train, ratebp_jax.checkpoint)

    check_workdir(workdir)               before any data are loaded: it can be created and written
    check_resume(config, workdir)        the config agrees with the record (MAY_CHANGE aside)
    with hold(workdir): ...              one run per workdir; record_start(config, workdir) inside
    load_config(workdir)                 the recorded config, for evaluation and the analyses
    load_trained(workdir, which=...)     (model, variables, test split, config) of a checkpoint

Resume refuses a config that computes something else than the recorded one:
every field but those of MAY_CHANGE must be equal, or the run would go on
with another method, T, batch or schedule under the old run's name. Nothing
here deletes or moves a file.

The lock is an advisory ``fcntl.flock`` on WORKDIR/run.lock, taken by the
run's process 0 (the other processes of a multi-host run follow its answer).
The kernel releases it when the process ends, however it ends (kill -9
included), so a stale lock never blocks a rerun. It works on local file
systems and on NFS (Linux emulates flock with NFS byte-range locks); on a file
system without locks (some FUSE mounts, Lustre without ``-o flock``) the run
warns and goes on unguarded. Two runs on different machines sharing a workdir
over a file system that does not propagate locks are not detected.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import errno
import fcntl
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from ratebp_jax.configuration import ConfigError

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = "run.lock"

# The fields a resumed run may change, and why each is harmless: none alters what a training
# step computes, the data order, or the learning-rate schedule.
MAY_CHANGE = {
    "data_dir": "where the prepared data are read from (the same data, moved)",
    "manual_dir": "where raw downloads are read from when preparing data",
    "checkpoint_every_epochs": "how often to save; the run saves at its end regardless",
    "log_every_steps": "how often to print and write metrics",
    "eval_batch_size": "evaluation batches are padded and masked: the accuracy is the same",
    "max_eval_steps": "how much of the test split is evaluated, not what is trained",
    "max_steps": "where to stop: the schedule depends on num_epochs, not on this cap",
}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-cpu", "tensorflow",
            "tensorflow-datasets", "ml-collections", "numpy", "ratebp_jax")


class RunError(RuntimeError):
    """The workdir cannot hold this run (not writable, in use by another run, no record)."""


class ConfigMismatch(ConfigError):
    """The given config differs from the run's recorded one in a field that alters the computation."""


def check_workdir(workdir: str) -> None:
    """Creates workdir if needed and checks that a file can be written in it; else RunError (one line)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, f".write_test.{os.getpid()}"), "w"):
            pass
        os.remove(os.path.join(workdir, f".write_test.{os.getpid()}"))
    except OSError as error:
        reason = {errno.EEXIST: "it is a file", errno.ENOTDIR: "a part of its path is a file",
                  errno.EACCES: "permission denied", errno.EROFS: "read-only file system"}.get(
                      error.errno, error.strerror or str(error))
        raise RunError(f"workdir {workdir} cannot be created or written ({reason}); choose another --workdir") \
            from None


def _json_tree(config: Any) -> dict:
    """A ConfigDict (or dict) as plain JSON values (tuples become lists), for recording and comparing."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json(sort_keys=True))
    return json.loads(json.dumps(config, sort_keys=True))


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(recorded: Any, given: Any) -> list[tuple[str, Any, Any]]:
    """(field, recorded value, given value) of every field outside MAY_CHANGE that differs; a field
    missing on one side counts, with the value "(absent)"."""
    a, b = _flatten(_json_tree(recorded)), _flatten(_json_tree(given))
    absent = "(absent)"
    return [(field, a.get(field, absent), b.get(field, absent)) for field in sorted(a.keys() | b.keys())
            if field not in MAY_CHANGE and a.get(field, absent) != b.get(field, absent)]


def check_config(recorded: Any, given: Any, workdir: str) -> None:
    """Raises ConfigMismatch naming each differing field (recorded -> given) and the two ways on."""
    diff = differences(recorded, given)
    if diff:
        fields = ", ".join(f"{field} {old!r} -> {new!r}" for field, old, new in diff)
        raise ConfigMismatch(
            f"the config differs from the one {workdir} was trained with ({os.path.join(workdir, CONFIG_FILE)}): "
            f"{fields}; rerun without these changes, or use a new --workdir")


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config recorded in workdir; RunError (one line) if it has none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise RunError(f"{workdir} has no record of its config ({CONFIG_FILE}): it is not a training run's workdir, "
                       "or it was made before runs were recorded; pass its --config")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def has_checkpoints(workdir: str) -> bool:
    """Whether any training step was saved in workdir."""
    latest = os.path.join(workdir, "checkpoints", "latest")
    return os.path.isdir(latest) and any(name.isdigit() for name in os.listdir(latest))


def check_resume(config: Any, workdir: str) -> str:
    """Checks config against workdir's record before anything is loaded or written.

    Returns what the start is: "new" (no record, no checkpoint), "resume"
    (the config matches the record), "unrecorded" (checkpoints but no record:
    made before runs were recorded; the given config is trusted once) or
    "restart" (a record but no checkpoint yet: nothing was trained, the new
    config replaces the record). Raises ConfigMismatch.
    """
    saved = has_checkpoints(workdir)
    if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        return "unrecorded" if saved else "new"
    if not saved:
        return "restart"
    check_config(load_config(workdir), config, workdir)
    return "resume"


def _code_version() -> str | None:
    """The git commit of this package's checkout, "+dirty" if it has changes; None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def record_start(config: Any, workdir: str, start: str) -> None:
    """Writes the config at a run's first start and appends this start to the history (process 0 only).

    start: what check_resume returned.
    """
    if jax.process_index() != 0:
        return
    if start in ("new", "unrecorded", "restart"):
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json(indent=2, sort_keys=True) + "\n")
    devices = jax.devices()
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "start": start,
             "argv": sys.argv, "overrides": [a for a in sys.argv[1:] if a.startswith("--config.")],
             "code_version": _code_version(), "packages": _package_versions(), "python": sys.version.split()[0],
             "host": socket.gethostname(), "device_kind": devices[0].device_kind,
             "platform": devices[0].platform, "device_count": len(devices),
             "process_count": jax.process_count()}
    with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(entry) + "\n")


def history(workdir: str) -> list[dict]:
    """The entries of workdir's history, oldest first ([] if none)."""
    path = os.path.join(workdir, HISTORY_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _agree(ok: bool) -> bool:
    """Process 0's ok, on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds workdir for one run; RunError (one line naming the holder) if another run holds it.

    Process 0 takes the lock and tells the others whether it got it, so that
    all processes of a multi-host run stop together or go on together.
    """
    handle, held, holder = None, True, ""
    if jax.process_index() == 0:
        handle = open(os.path.join(workdir, LOCK_FILE), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = False
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not said who it is"
            handle.close()
        except OSError as error:  # no locks on this file system: warn, run unguarded
            from absl import logging
            logging.warning("cannot lock %s (%s); a second run on this workdir would not be stopped",
                            handle.name, error.strerror)
        else:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}: "
                         f"{' '.join(sys.argv)}\n")
            handle.flush()
    if not _agree(held):
        holder = f": {holder}" if holder else " (process 0 could not take its lock)"
        raise RunError(f"workdir {workdir} is in use by another run{holder}; wait for it to finish, "
                       "or use another --workdir")
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def suggest(field: str, fields: list[str]) -> str:
    """", did you mean 'x'" with the closest of fields, or ""."""
    close = difflib.get_close_matches(field, fields, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def config_fields(config: Any) -> list[str]:
    """Every field of a config as a dotted path ("optimizer.learning_rate"), nested dicts included."""
    return sorted(_flatten(_json_tree(config)))


def load_trained(workdir: str, *, which: str = "best", config: Any = None) -> tuple[Any, dict, Any, Any]:
    """(model, {"params", "batch_stats"}, test split, config) of a checkpoint of the run in workdir.

    which: "best" (highest test accuracy) or "latest". config: None reads the
    run's record; a given config must agree with it (check_config), and is
    used as given (its data_dir may differ). A run made before records
    needs it. The model has no device axis, for analysis on one device; the
    split is this process's test split at config.eval_batch_size.
    Raises RunError, ConfigMismatch, or FileNotFoundError (naming the directory
    and the command to run) if the run has no such checkpoint.
    """
    from ratebp_jax import data, train
    from ratebp_jax.checkpoint import Checkpoints

    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if config is None:
        config = load_config(workdir)
    elif os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        check_config(load_config(workdir), config, workdir)
    directory = os.path.join(workdir, "checkpoints")
    missing = FileNotFoundError(f"no {which} checkpoint in {directory}; train first: "
                                f"python -m experiments.train --config CONFIG --workdir {workdir}")
    if not os.path.isdir(os.path.join(directory, which)):  # checked first: Checkpoints would create it
        raise missing
    split = data.make_split(config.dataset, train=False, batch_size=config.eval_batch_size, seed=config.seed,
                            data_dir=config.data_dir or None)
    model = train.create_model(config, split.num_classes, split.input_shape[-1], axis_name=None)
    state = train.create_train_state(config, model, np.zeros((1,) + tuple(split.input_shape), np.float32), 1)
    checkpoints = Checkpoints(directory)
    restored = {"best": checkpoints.restore_best, "latest": checkpoints.restore_latest}[which](state)
    checkpoints.close()
    if restored is None:
        raise missing
    state = restored[0]
    return model, {"params": state.params, "batch_stats": state.batch_stats}, split, config
