"""A run's workdir is its record (ratebp_jax.runs): config and history kept, resume checked against
them, one run at a time, the workdir checked before any data; experiments.evaluate reads the run alone."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import conftest
from configs import digits
from ratebp_jax import runs, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "XLA_FLAGS": conftest.XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
pytestmark = pytest.mark.xdist_group("runs")  # the module's trained run is made once


def smoke_config(**overrides):
    """The digits smoke recipe (2 steps, batch 8, T = 2, 2 eval batches)."""
    config = digits.get_config("smoke")
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "smoke")
    train.train_and_evaluate(smoke_config(), workdir)
    return workdir


def checkpoint_bytes(workdir) -> dict:
    """{relative path: sha256} of every file under workdir/checkpoints."""
    digests = {}
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def cli(module, *flags, timeout=300):
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *flags], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(proc, *fragments):
    """Exit status 2, one "error:" line on stderr holding every fragment, no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert all(f in errors[0] for f in fragments), errors[0]


def test_the_record_loads_back_and_each_start_is_in_the_history(run_dir):
    recorded = runs.load_config(run_dir)
    assert runs.differences(recorded, smoke_config()) == []
    assert recorded.neuron.decay == 0.2 and recorded.optimizer.name == "adam"
    [entry] = runs.history(run_dir)
    assert entry["start"] == "new" and entry["process_count"] == 1 and entry["device_count"] == 4
    assert entry["packages"]["jax"] == __import__("jax").__version__ and entry["platform"] == "cpu"
    assert entry["code_version"] is None or len(entry["code_version"].split("+")[0]) == 40


@pytest.mark.parametrize("field,value,shown", [
    ("method", "bptt_m", "method 'rate_m' -> 'bptt_m'"),
    ("timesteps", 1, "timesteps 2 -> 1"),
    ("batch_size", 16, "batch_size 8 -> 16"),
    ("model", "resnet18", "model 'digits_vgg' -> 'resnet18'"),
    ("optimizer.name", "sgd", "optimizer.name 'adam' -> 'sgd'"),
    ("num_epochs", 3, "num_epochs 1 -> 3"),
    ("sltt_k", 1, "sltt_k None -> 1"),
])
def test_resume_refuses_a_changed_field_and_touches_nothing(run_dir, field, value, shown):
    config = smoke_config()
    node, *path = [config] + field.split(".")
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    before = checkpoint_bytes(run_dir)
    with pytest.raises(runs.ConfigMismatch) as error:
        train.train_and_evaluate(config, run_dir)
    message = str(error.value)
    assert "\n" not in message and shown in message and message.count("->") == 1
    assert "rerun without these changes, or use a new --workdir" in message
    assert checkpoint_bytes(run_dir) == before and len(runs.history(run_dir)) == 1


def test_resume_goes_on_after_harmless_changes(run_dir, tmp_path):
    """checkpoint_every_epochs, data_dir (digits builds itself there), max_steps: the run trains on."""
    workdir = str(tmp_path / "run")
    shutil.copytree(run_dir, workdir)
    config = smoke_config(checkpoint_every_epochs=3, data_dir=str(tmp_path / "data"), max_steps=3)
    result = train.train_and_evaluate(config, workdir)
    assert result["steps_done"] == 3
    assert [e["start"] for e in runs.history(workdir)] == ["new", "resume"]
    assert runs.load_config(workdir).max_steps == 2  # the record is the first start's config


def test_a_run_made_before_records_is_trusted_once_and_recorded(run_dir, tmp_path, capsys):
    workdir = str(tmp_path / "old")
    shutil.copytree(run_dir, workdir)
    os.remove(os.path.join(workdir, runs.CONFIG_FILE))
    os.remove(os.path.join(workdir, runs.HISTORY_FILE))
    train.train_and_evaluate(smoke_config(), workdir)
    assert "no record of its config" in capsys.readouterr().out
    assert runs.differences(runs.load_config(workdir), smoke_config()) == []
    with pytest.raises(runs.ConfigMismatch, match="timesteps 2 -> 1"):
        train.train_and_evaluate(smoke_config(timesteps=1), workdir)


def test_load_trained_reads_the_record_and_checks_a_given_config(run_dir):
    model, variables, split, config = runs.load_trained(run_dir, which="latest")
    assert config.timesteps == 2 and set(variables) == {"params", "batch_stats"}
    with pytest.raises(runs.ConfigMismatch, match="timesteps 2 -> 4"):
        runs.load_trained(run_dir, config=smoke_config(timesteps=4))
    with pytest.raises(runs.RunError, match="no record of its config"):
        runs.load_config(os.path.dirname(run_dir))


@pytest.mark.slow  # command-line processes
def test_command_line_errors_are_one_line_and_come_before_any_data(run_dir, tmp_path):
    """Each exits 2 with one line. The workdir errors come before the data: the dataset asked for is
    not prepared in the empty data_dir, and that error would be another line."""
    before = checkpoint_bytes(run_dir)
    assert_one_error_line(cli("train", "--config", "configs/digits.py:smoke", "--workdir", run_dir,
                              "--config.method=bptt_m"), "method 'rate_m' -> 'bptt_m'")
    assert checkpoint_bytes(run_dir) == before
    not_prepared = ["--config.dataset=cifar10", "--config.model=resnet18", f"--config.data_dir={tmp_path / 'none'}"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    unwritable = tmp_path / "read_only"
    unwritable.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes through file modes; /sys refuses new entries to everyone
        unwritable = "/sys/ratebp_jax_test_run"
    for workdir, reason in ((a_file, "(it is a file)"), (a_file / "run", "(a part of its path is a file)"),
                            (unwritable, "cannot be created or written")):
        proc = cli("train", "--config", "configs/cifar10_resnet18.py:smoke", "--workdir", str(workdir), *not_prepared)
        assert_one_error_line(proc, f"workdir {workdir} cannot be created or written", reason)
    assert_one_error_line(cli("train", "--config", "configs/digits.py", "--workdir", str(tmp_path / "w"),
                              "--config.num_epoch=1"),
                          "--config.num_epoch: the config has no field 'num_epoch'; did you mean 'num_epochs'?")
    assert_one_error_line(cli("train", "--config", "configs/digits.py", "--workdir", str(tmp_path / "w"),
                              "--config.model=vgg11"),
                          "config.model='vgg11' cannot take the input of dataset 'digits', examples of shape [8, 8, 1]")
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow  # two training processes
def test_a_second_run_on_a_held_workdir_stops_and_the_first_is_undisturbed(run_dir, tmp_path):
    """The first run is paused (SIGSTOP) while it holds the workdir, so that the second surely meets it."""
    workdir = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-m", "experiments.train", "--config", "configs/digits.py:smoke",
                              "--workdir", workdir], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = os.path.join(workdir, runs.LOCK_FILE)
    deadline = time.monotonic() + 240
    while not (os.path.exists(lock) and f"pid {first.pid} " in open(lock).read()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.2)
    first.send_signal(signal.SIGSTOP)
    try:
        second = cli("train", "--config", "configs/digits.py:smoke", "--workdir", workdir)
    finally:
        first.send_signal(signal.SIGCONT)
    assert_one_error_line(second, f"workdir {workdir} is in use by another run: pid {first.pid} on ",
                          "wait for it to finish, or use another --workdir")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    with open(os.path.join(workdir, "results.json")) as f, open(os.path.join(run_dir, "results.json")) as g:
        assert json.load(f)["params_l2"] == json.load(g)["params_l2"]  # as the run made alone


@pytest.mark.slow  # a command-line process
def test_evaluate_reproduces_the_final_accuracy_of_the_run(run_dir):
    proc = cli("evaluate", "--workdir", run_dir, "--which", "latest")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(run_dir, "results.json")) as f, open(os.path.join(run_dir, "eval_latest.json")) as g:
        results, evaluated = json.load(f), json.load(g)
    assert evaluated["timesteps"] == 2 and evaluated["test_accuracy"] == results["test_accuracy"]
    assert f"test accuracy {results['test_accuracy']:.2f}%" in proc.stdout
