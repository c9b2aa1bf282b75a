"""CIFAR10-DVS into training: prepare, the Split of sequences, the config through the CLI, the timesteps check.

The data are the fake recordings of test_data_dvs (2 classes × 20, indices
90..109 spanning the "tebn" test/train boundary: 20 train, 20 test), prepared
once for this module with ``python -m experiments.prepare`` and shared by
every test.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import conftest

import ratebp_jax.data as data
from configs import cifar10_dvs_vggsnn
from ratebp_jax import configuration, runs
from ratebp_jax.data import dvs
from test_data_dvs import FAKE_CLASSES, FAKE_INDICES, write_fake_archive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = [dvs.CLASS_NAMES.index(name) for name in FAKE_CLASSES]
pytestmark = pytest.mark.xdist_group("dvs_training")  # one worker prepares the module's dataset once


def run_module(module, *flags, timeout=300):
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *flags], cwd=REPO,
                          env=conftest.ONE_DEVICE_ENV, capture_output=True, text=True, timeout=timeout)


def prepare_cli(data_dir, manual_dir):
    return run_module("prepare", "--config", "configs/cifar10_dvs_vggsnn.py", f"--config.data_dir={data_dir}",
                      f"--config.manual_dir={manual_dir}")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, manual_dir, expected frames by (label, index)), prepared by experiments.prepare."""
    manual_dir = tmp_path_factory.mktemp("dvs_manual")
    data_dir = tmp_path_factory.mktemp("dvs_data")
    expected = write_fake_archive(manual_dir, np.random.default_rng(5))
    proc = prepare_cli(data_dir, manual_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == f"cifar10_dvs: prepared in {data_dir}/cifar10_dvs/tebn/1.0.0 " \
                                           "(train 20, test 20 examples)"
    assert "Generating splits" in proc.stderr  # TFDS's progress bars
    return str(data_dir), str(manual_dir), expected


def make(prepared, **kwargs):
    args = dict(batch_size=8, seed=3, process_index=0, process_count=1, data_dir=prepared[0])
    return data.make_split("cifar10_dvs", **{**args, **kwargs})


def test_registered_as_a_sequence_dataset():
    assert "cifar10_dvs" in data.DATASETS
    assert data.SEQUENCE_LENGTHS["cifar10_dvs"] == dvs.NUM_FRAMES == dvs.DATASET.input_shape[0] == 10


@pytest.mark.slow  # prepares the fake DVS archives (the module's fixture)
def test_preparing_again_keeps_the_dataset(prepared):
    data_dir, manual_dir, _ = prepared
    built = sorted(os.listdir(os.path.join(data_dir, "cifar10_dvs", "tebn", "1.0.0")))
    stamps = {name: os.stat(os.path.join(data_dir, "cifar10_dvs", "tebn", "1.0.0", name)).st_mtime_ns
              for name in built}
    proc = prepare_cli(data_dir, os.path.join(manual_dir, "absent"))  # no files needed: nothing is rebuilt
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1].startswith(f"cifar10_dvs: prepared in {data_dir}")
    assert {name: os.stat(os.path.join(data_dir, "cifar10_dvs", "tebn", "1.0.0", name)).st_mtime_ns
            for name in built} == stamps


def test_eval_yields_every_test_sequence_once_unaugmented(prepared):
    split = make(prepared, train=False)
    batches = list(split.epoch(0))
    assert (split.num_classes, split.input_shape, split.num_examples) == (10, (10, 48, 48, 2), 20)
    assert split.steps_per_epoch == len(batches) == 3  # 20 examples in batches of 8, the last padded
    for batch in batches:
        assert batch["image"].shape == (8, 10, 48, 48, 2) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 20 + [0] * 4)
    images = np.concatenate([b["image"] for b in batches])[:20]
    labels = np.concatenate([b["label"] for b in batches])[:20]
    expected = prepared[2]
    seen = []
    for image, label in zip(images, labels):
        keys = [key for key, frames in expected.items() if np.allclose(frames, image, atol=1e-6)]
        assert len(keys) == 1 and keys[0][0] == label
        seen.append(keys[0])
    assert sorted(seen) == sorted((label, i) for label in LABELS for i in FAKE_INDICES if i < 100)


def test_train_is_augmented_deterministically_per_seed_and_epoch(prepared):
    split = make(prepared, train=True)
    assert split.steps_per_epoch == 2  # 20 // 8, remainder dropped
    first, again, other_epoch = list(split.epoch(0)), list(split.epoch(0)), list(split.epoch(1))
    resumed = list(split.epoch(0, start_step=1))
    other_seed = list(make(prepared, train=True, seed=4).epoch(0))
    for batch, same in zip(first, again):
        assert batch["image"].shape == (8, 10, 48, 48, 2) and batch["image"].dtype == np.float32
        np.testing.assert_array_equal(batch["image"], same["image"])
        np.testing.assert_array_equal(batch["label"], same["label"])
    np.testing.assert_array_equal(resumed[0]["image"], first[1]["image"])
    assert not np.array_equal(first[0]["image"], other_epoch[0]["image"])
    assert not np.array_equal(first[0]["image"], other_seed[0]["image"])
    # Each training sequence is one flip + roll (the same for all frames) of a
    # train recording of its label; flip and roll keep every frame's event sum.
    train = {key: frames for key, frames in prepared[2].items() if key[1] >= 100}
    for image, label in zip(np.concatenate([b["image"] for b in first]), np.concatenate([b["label"] for b in first])):
        (key, frames), = [(k, f) for k, f in train.items() if np.allclose(f.sum((1, 2, 3)), image.sum((1, 2, 3)))]
        assert key[0] == label
        assert any(np.allclose(image, np.roll(frames[:, :, ::-1] if flip else frames, (dy, dx), (1, 2)), atol=1e-6)
                   for flip in (False, True) for dy in range(-5, 6) for dx in range(-5, 6))


@pytest.mark.slow  # a CLI process
def test_prepare_without_archives_says_where_to_put_them(tmp_path):
    proc = prepare_cli(tmp_path / "data", tmp_path / "nothing_here")
    assert proc.returncode == 2
    message = proc.stderr[proc.stderr.index("error: "):]
    for part in ("'cifar10_dvs'", str(tmp_path / "nothing_here"), "airplane.zip", "figshare.com"):
        assert part in message, part
    assert not (tmp_path / "data" / "cifar10_dvs").exists()


def test_timesteps_other_than_the_frame_count_is_a_config_error():
    config = cifar10_dvs_vggsnn.get_config()
    configuration.validate(config, data.DATASETS, device_count=4, sequence_lengths=data.SEQUENCE_LENGTHS)
    config.timesteps = 4
    with pytest.raises(configuration.ConfigError, match=r"^config\.timesteps=4 is invalid: dataset 'cifar10_dvs' "
                                                        r"is a sequence of 10 frames.*set timesteps=10$"):
        configuration.validate(config, data.DATASETS, device_count=4, sequence_lengths=data.SEQUENCE_LENGTHS)


def test_smoke_variant_keeps_the_ten_frames():
    config = cifar10_dvs_vggsnn.get_config("smoke")
    assert (config.timesteps, config.max_steps, config.batch_size) == (10, 2, 8)
    recipe = cifar10_dvs_vggsnn.get_config()
    assert (recipe.model, recipe.timesteps, recipe.batch_size, recipe.num_epochs) == ("vggsnn_dvs", 10, 128, 300)
    assert (recipe.optimizer.name, recipe.optimizer.momentum, recipe.optimizer.learning_rate,
            recipe.optimizer.weight_decay) == ("sgd", 0.9, 0.1, 5e-4)


def run_cli(workdir, *flags):
    return run_module("train", "--config", "configs/cifar10_dvs_vggsnn.py:smoke", "--workdir", str(workdir), *flags)


@pytest.mark.slow  # a CLI process
def test_unprepared_data_stop_training_with_one_line_naming_the_prepare_command(tmp_path):
    proc = run_cli(tmp_path / "run", f"--config.data_dir={tmp_path / 'data'}")
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()][-1:] == [
        f"error: dataset 'cifar10_dvs' is not prepared in {tmp_path / 'data'}; prepare it once with: "
        f"python -m experiments.prepare --dataset cifar10_dvs --data_dir {tmp_path / 'data'}"]
    assert "Traceback" not in proc.stderr
    # The workdir was checked (and made) before the data, but nothing of a run was recorded or saved.
    assert set(os.listdir(tmp_path / "run")) <= {runs.LOCK_FILE}


@pytest.mark.slow  # the T = 10 VGG, trained
def test_dvs_config_trains_through_the_cli(prepared, tmp_path):
    """rate_m on the T = 10 event frames (every method runs on sequences in test_methods)."""
    data_dir, _, _ = prepared
    method = "rate_m"
    proc = run_cli(tmp_path, f"--config.data_dir={data_dir}", f"--config.method={method}",
                   "--config.batch_size=2")  # batch 2: half the test's time
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert (results["method"], results["dataset"], results["timesteps"]) == (method, "cifar10_dvs", 10)
    assert results["steps_done"] == 2 and np.isfinite(results["params_l2"])


@pytest.mark.slow  # a CLI process
def test_cli_rejects_other_timesteps_with_one_line(tmp_path):
    proc = run_cli(tmp_path, "--config.timesteps=4")
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: config.timesteps=4 is invalid: dataset 'cifar10_dvs' is a sequence of 10 frames per example, "
        "used as given; set timesteps=10"]
    assert not os.listdir(tmp_path)
