"""CIFAR-10/100 pipelines under tfds.testing.mock_data (no real data here)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import conftest
import ratebp_jax.data as data

SPEC_NORMALIZATION = {  # SPEC §6
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def _mock_images(name: str, num_examples: int) -> np.ndarray:
    """The fake test images mock_data serves (deterministic), uint8 [N, 32, 32, 3].

    (batch_size=-1 would ask for a batch of sys.maxsize under mock_data.)
    """
    dataset = tfds.builder(name).as_dataset(split="test", shuffle_files=False)
    return next(iter(tfds.as_numpy(dataset.batch(num_examples))))["image"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_eval_is_the_spec_normalization_of_the_images(name, tmp_path):
    with conftest.prepared_mock_data(tmp_path, name, num_examples=10):
        split = data.make_split(name, train=False, batch_size=4, process_index=0, process_count=1)
        batches = list(split.epoch(0))
        raw = _mock_images(name, 10)
    assert split.num_classes == NUM_CLASSES[name] and split.input_shape == (32, 32, 3)
    assert split.steps_per_epoch == len(batches) == 3
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 10 + [0] * 2)
    images = np.concatenate([b["image"] for b in batches])[:10]
    mean, std = SPEC_NORMALIZATION[name]
    np.testing.assert_allclose(images, (raw / 255.0 - np.array(mean)) / np.array(std), atol=1e-5)


@pytest.mark.parametrize("name", ["cifar10", pytest.param("cifar100", marks=pytest.mark.slow)])
def test_train_batches_are_augmented_deterministically_with_a_black_cutout_hole(name, tmp_path):
    with conftest.prepared_mock_data(tmp_path, name, num_examples=9):
        split = data.make_split(name, train=True, batch_size=4, seed=1, process_index=0, process_count=1)
        first = list(split.epoch(0))
        again = list(split.epoch(0))
        plain = list(data.make_split(name, train=True, batch_size=4, seed=1, augment=False,
                                     process_index=0, process_count=1).epoch(0))
    assert split.steps_per_epoch == len(first) == 2  # 9 // 4, remainder dropped
    mean, std = SPEC_NORMALIZATION[name]
    black = -np.array(mean, np.float32) / np.array(std, np.float32)
    for batch, same, unaugmented in zip(first, again, plain):
        assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
        assert np.all(batch["mask"] == 1.0) and batch["label"].dtype == np.int32
        np.testing.assert_array_equal(batch["image"], same["image"])
        np.testing.assert_array_equal(batch["label"], unaugmented["label"])
        assert not np.allclose(batch["image"], unaugmented["image"])
        for image in batch["image"]:
            # Cutout runs before Normalize (reference order): its hole, at least
            # 8×8 even in a corner, holds black pixels, i.e. -mean/std.
            assert np.all(np.isclose(image, black, atol=1e-5), axis=-1).sum() >= 64
