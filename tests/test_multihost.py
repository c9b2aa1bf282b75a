"""Several processes and preemption, with real processes: ``experiments.train`` started as the
README's "Several hosts" says (2 processes x 2 CPU devices on loopback), killed, signalled,
and given corrupt checkpoints.

Every run trains the digits config at a global batch of 32 (44 steps per epoch, 2 epochs,
T = 2) and is compared by its final checkpoint with the uninterrupted runs. They run in
float64: in float32 the two-process run differs from the one-process run by 8e-5 (relative,
params) after one Adam step and 4% after 88, measured on the 2-core CPU. The cross-process
all-reduce (gloo) adds the four devices' gradients in another order than XLA:CPU does in
one process, a rounding difference (4e-10 after one SGD step); Adam's first update,
g / sqrt(g^2), turns it into a whole learning-rate step wherever g is at rounding level,
and the network's spikes then flip (a deep SNN is chaotic). In float64 they agree to 2e-12.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_checkpoint import contents, save, truncate_largest_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH, TOTAL_STEPS = 1437 // 32, 2 * (1437 // 32)
TRAIN_ARGS = ["--config", "configs/digits.py", "--config.batch_size=32", "--config.num_epochs=2",
              "--config.timesteps=2", "--config.log_every_steps=4", "--config.dtype=float64"]
DISTRIBUTED_ENV = ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
PREEMPTED_LINE = "checkpoint saved; rerun the same command to resume"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multihost")]  # runs share the module's fixtures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(processes: int, argv: list[str], log: str, env: dict | None = None) -> list[subprocess.Popen]:
    """``processes`` copies of ``python argv`` (2 CPU devices each if several, else 4), as the README
    starts them, with ``env`` added to their environment; process i writes log.i.out / log.i.err."""
    base = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}  # keeps the compilation cache
    base.update(env or {})
    base.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", JAX_ENABLE_X64="1",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // processes}")
    if processes > 1:
        base.update(JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
                    JAX_NUM_PROCESSES=str(processes))
        argv = argv + ["--distributed"]
    return [subprocess.Popen([sys.executable, *argv], cwd=REPO, env={**base, "JAX_PROCESS_ID": str(i)},
                             stdout=open(f"{log}.{i}.out", "w"), stderr=open(f"{log}.{i}.err", "w"))
            for i in range(processes)]


def finish(procs, timeout: float = 300) -> list[int]:
    return [p.wait(timeout) for p in procs]


def train(workdir, processes: int, *extra: str, env: dict | None = None) -> list[int]:
    """Trains to the end (or to a failure); the exit codes of the processes."""
    return finish(start(processes, ["-m", "experiments.train", "--workdir", str(workdir), *TRAIN_ARGS, *extra],
                        str(workdir), env))


def outputs(workdir, stream: str) -> list[str]:
    return [open(path).read() for path in sorted(glob.glob(f"{workdir}.*.{stream}"))]


def wait_for(condition, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), "a process ended before the test could interrupt it"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def final_variables(workdir) -> dict:
    """{"params", "batch_stats"} of the newest latest checkpoint, as NumPy."""
    directory = os.path.join(workdir, "checkpoints", "latest")
    step = max(int(name) for name in os.listdir(directory) if name.isdigit())
    state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
    return {"step": int(state["step"]), "params": state["params"], "batch_stats": state["batch_stats"]}


def relative_error(a: dict, b: dict) -> float:
    import jax

    diff = jax.tree.map(lambda x, y: np.sum((np.asarray(x, np.float64) - y) ** 2), a, b)
    norm = jax.tree.map(lambda y: np.sum(np.asarray(y, np.float64) ** 2), b)
    return float(np.sqrt(sum(jax.tree.leaves(diff)) / sum(jax.tree.leaves(norm))))


def assert_same_training(workdir, reference, tolerance: float = 1e-6) -> None:
    ours, theirs = final_variables(workdir), final_variables(reference)
    assert ours["step"] == theirs["step"] == TOTAL_STEPS
    for tree in ("params", "batch_stats"):
        assert relative_error(ours[tree], theirs[tree]) <= tolerance, tree


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs: one process on 4 devices, and 2 processes x 2 devices."""
    root = tmp_path_factory.mktemp("multihost")
    codes = {name: train(root / name, processes) for name, processes in (("one", 1), ("two", 2))}
    assert codes == {"one": [0], "two": [0, 0]}, [outputs(root / "two", "err")]
    return root


def test_two_processes_train_as_one_process_on_as_many_devices(runs):
    # Same data per device (pipeline's global batches), gradients and BatchNorm statistics averaged
    # over the 4 devices: only the order of the cross-process sums can differ (module docstring).
    assert_same_training(runs / "two", runs / "one", tolerance=1e-10)


def test_only_process_zero_writes_results_and_events_and_prints(runs):
    with open(runs / "two" / "results.json") as f:
        results = json.load(f)
    assert set(results) == {"method", "model", "dataset", "timesteps", "epochs_done", "steps_done", "test_accuracy",
                            "best_test_accuracy", "params_l2", "train_time_s"}
    assert (results["epochs_done"], results["steps_done"]) == (2, TOTAL_STEPS) and results["train_time_s"] > 0
    assert len(glob.glob(str(runs / "two" / "events.out.tfevents.*"))) == 1
    first, second = outputs(runs / "two", "out")
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in first and "done: test accuracy" in first
    assert "step" not in second and "test accuracy" not in second


def test_two_processes_resume_after_sigkill_and_after_sigterm(runs, tmp_path):
    workdir = tmp_path / "two"
    argv = ["-m", "experiments.train", "--workdir", str(workdir), *TRAIN_ARGS]
    # SIGKILL to both once the first checkpoint (end of epoch 1) is committed.
    procs = start(2, argv, str(tmp_path / "killed"))
    wait_for(lambda: os.path.isdir(workdir / "checkpoints" / "latest" / str(STEPS_PER_EPOCH)), procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    assert finish(procs) == [-signal.SIGKILL] * 2
    assert not os.path.exists(workdir / "results.json")
    # The rerun resumes from it; SIGTERM to both in the middle of epoch 2.
    procs = start(2, argv, str(tmp_path / "terminated"))
    wait_for(lambda: f"step {STEPS_PER_EPOCH + 8}/" in outputs(tmp_path / "terminated", "out")[0], procs)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert finish(procs) == [75, 75]
    first, second = outputs(tmp_path / "terminated", "err")
    assert f"resuming from step {STEPS_PER_EPOCH}" in outputs(tmp_path / "terminated", "out")[0]
    [line] = [line for line in first.splitlines() if PREEMPTED_LINE in line]
    stopped = int(line.split("preempted at step ")[1].split(",")[0])
    assert STEPS_PER_EPOCH + 8 <= stopped < TOTAL_STEPS and PREEMPTED_LINE not in second
    # The last rerun ends where the uninterrupted two-process run did.
    assert train(workdir, 2) == [0, 0]
    assert f"resuming from step {stopped}" in outputs(workdir, "out")[0]
    assert_same_training(workdir, runs / "two", tolerance=0.0)


def test_one_process_sigterm_then_corrupt_checkpoints(runs, tmp_path):
    workdir = tmp_path / "one"
    procs = start(1, ["-m", "experiments.train", "--workdir", str(workdir), *TRAIN_ARGS], str(tmp_path / "term"))
    wait_for(lambda: "step 12/" in outputs(tmp_path / "term", "out")[0], procs)
    procs[0].send_signal(signal.SIGTERM)
    assert finish(procs) == [75]
    [line] = outputs(tmp_path / "term", "err")[0].strip().splitlines()[-1:]
    assert line.startswith("preempted at step ") and line.endswith(PREEMPTED_LINE)
    stopped = int(line.split()[3].rstrip(","))
    assert 12 <= stopped < STEPS_PER_EPOCH  # mid-epoch: the rerun resumes inside epoch 1
    assert train(workdir, 1) == [0]
    assert_same_training(workdir, runs / "one", tolerance=0.0)

    # The newest checkpoint truncated: one warning, moved aside, resumed from the one before, same end.
    latest = workdir / "checkpoints" / "latest"
    assert sorted(int(s) for s in os.listdir(latest) if s.isdigit()) == [STEPS_PER_EPOCH, TOTAL_STEPS]
    truncate_largest_file(latest / str(TOTAL_STEPS))
    truncated = contents(latest / str(TOTAL_STEPS))
    assert train(workdir, 1) == [0]
    [err], [out] = outputs(workdir, "err"), outputs(workdir, "out")
    moved = workdir / "checkpoints" / "unreadable" / f"latest_{TOTAL_STEPS}"
    assert err.count("cannot be read") == 1 and f"{latest / str(TOTAL_STEPS)} cannot be read" in err
    assert f"moved it to {moved}" in err and contents(moved) == truncated
    assert f"resuming from step {STEPS_PER_EPOCH}" in out
    assert_same_training(workdir, runs / "one", tolerance=0.0)

    # Every checkpoint truncated: one line naming the directory, exit 2, no traceback.
    for step in (STEPS_PER_EPOCH, TOTAL_STEPS):
        truncate_largest_file(latest / str(step))
    assert train(workdir, 1) == [2]
    [err] = outputs(workdir, "err")
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: no checkpoint in {latest} can be read")
    assert os.listdir(workdir / "checkpoints" / "unreadable") == [f"latest_{TOTAL_STEPS}"]  # nothing more moved


CHECKPOINT_WORKER = """
import os, sys
from ratebp_jax import checkpoint, multihost
multihost.initialize()
sys.path.insert(0, "tests")
from test_checkpoint import restore
for case in sys.argv[1:-1]:  # NAME=DIRECTORY=HOOK (then start()'s --distributed): restore_latest with TEST_FAIL_READ=HOOK
    name, directory, os.environ[checkpoint.TEST_FAIL_READ] = case.split("=")
    try:
        print(name, "restored", restore(directory), flush=True)
    except checkpoint.CheckpointError as error:
        print(name, "error:", error, flush=True)
"""


def test_two_processes_restore_the_step_process_zero_chooses(tmp_path):
    # Read failures injected in one process (checkpoint.TEST_FAIL_READ: once = transient, always =
    # unreadable there), and a truncated checkpoint; two saves kept in each directory (steps 2 and 3).
    clean, truncated = tmp_path / "clean", tmp_path / "truncated"
    for directory in (clean, truncated):
        save(directory, [1, 2, 3])
    truncate_largest_file(truncated / "latest" / "3")
    before = {directory: contents(directory / "latest" / "3") for directory in (clean, truncated)}
    cases = [f"transient={clean}=1:3:once",  # process 1 fails once, then passes on retry
             f"follower={clean}=1:3:always",  # process 1 cannot read what process 0 restores
             f"leader={clean}=0:3:always,1:2:once",  # process 0 cannot read 3 (which process 1 could)
             f"truncated={truncated}="]
    out = str(tmp_path / "worker")
    assert finish(start(2, ["-c", CHECKPOINT_WORKER, *cases], out), timeout=120) == [0, 0]  # none hangs
    line = (f"follower error: checkpoint {clean / 'latest' / '3'} cannot be read in process 1{{}}, though process 0 "
            "restores it; check that every process sees the same files, then rerun")
    printed = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for out in outputs(out, "out")]
    assert printed == [["transient restored 3", line.format(reason), "leader restored 2", "truncated restored 2"]
                       for reason in ("", " (read failure injected by RATEBP_JAX_TEST_FAIL_READ)")]
    (first, second) = outputs(out, "err")
    assert second.count("passed on retry") == 2 and "passed on retry" not in first  # transient, leader
    assert first.count("cannot be read") == 2 and "cannot be read" not in second  # leader, truncated
    for directory in (clean, truncated):  # moved aside by process 0, byte for byte
        assert os.listdir(directory / "latest") == ["2"]
        assert contents(directory / "unreadable" / "latest_3") == before[directory]


def test_two_processes_stop_together_if_one_cannot_read(runs, tmp_path):
    # The step process 0 restores cannot be read in process 1: the command exits 2 in both, one line each.
    workdir = tmp_path / "two"
    shutil.copytree(runs / "two", workdir)
    newest = workdir / "checkpoints" / "latest" / str(TOTAL_STEPS)
    assert train(workdir, 2, env={"RATEBP_JAX_TEST_FAIL_READ": f"1:{TOTAL_STEPS}:always"}) == [2, 2]
    errors = outputs(workdir, "err")
    assert [err.strip().splitlines()[-1] for err in errors] == [
        f"error: checkpoint {newest} cannot be read in process 1{reason}, though process 0 restores it; "
        "check that every process sees the same files, then rerun"
        for reason in ("", " (read failure injected by RATEBP_JAX_TEST_FAIL_READ)")]
    assert not any("Traceback" in err for err in errors) and not os.path.exists(workdir / "checkpoints" / "unreadable")


DATA_WORKER = """
import sys
import jax
import numpy as np
from ratebp_jax import data, multihost
multihost.initialize()
rows = {}
for train in (True, False):
    batches = list(data.make_split("digits", train=train, batch_size=16, augment=False).epoch(0))
    rows[f"{train}_image"] = np.concatenate([b["image"] for b in batches])
    rows[f"{train}_mask"] = np.concatenate([b["mask"] for b in batches])
np.savez(f"{sys.argv[1]}.{jax.process_index()}.npz", **rows)
"""


def multiset(images) -> list:
    return sorted(image.tobytes() for image in images)


def test_two_processes_read_each_example_once(tmp_path):
    from ratebp_jax import data

    out = str(tmp_path / "rows")
    assert finish(start(2, ["-c", DATA_WORKER, out], out)) == [0, 0]
    shards = [np.load(f"{out}.{i}.npz") for i in range(2)]
    # Training: the two processes read disjoint halves of the one-process epoch (global batch 32).
    whole = np.concatenate([b["image"] for b in data.make_split(
        "digits", train=True, batch_size=32, augment=False, process_index=0, process_count=1).epoch(0)])
    assert [len(s["True_image"]) for s in shards] == [STEPS_PER_EPOCH * 16] * 2
    assert multiset(np.concatenate([s["True_image"] for s in shards])) == multiset(whole)
    # Evaluation: every one of the 360 test examples counted once, the padding masked.
    assert sum(s["False_mask"].sum() for s in shards) == 360
    real = np.concatenate([s["False_image"][s["False_mask"] == 1] for s in shards])
    test_split = data.make_split("digits", train=False, batch_size=360, process_index=0, process_count=1)
    assert multiset(real) == multiset(next(test_split.epoch(0))["image"])
