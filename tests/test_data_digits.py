"""The embedded digits dataset: the TFDS builder, its split, its normalization
and its augmentation."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

import ratebp_jax.data as data
from ratebp_jax.data import digits


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir with sklearn_digits built (shared by the modules of one session)."""
    directory = str(tmp_path_factory.getbasetemp() / "tfds")
    data.make_split("digits", train=False, batch_size=360, data_dir=directory, process_index=0, process_count=1)
    return directory


def _split_arrays(data_dir: str, split: str):
    builder = tfds.builder(digits.TFDS_NAME, data_dir=data_dir)
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    return batch["image"], batch["label"]


def test_builder_builds_a_stratified_80_20_split(data_dir):
    from sklearn.datasets import load_digits

    builder = tfds.builder(digits.TFDS_NAME, data_dir=data_dir)
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.splits["test"].num_examples == 360
    all_counts = np.bincount(load_digits().target, minlength=10)
    train_images, train_labels = _split_arrays(data_dir, "train")
    _, test_labels = _split_arrays(data_dir, "test")
    assert train_images.dtype == np.uint8 and train_images.shape[1:] == (8, 8, 1)
    assert train_images.max() <= 16
    test_counts = np.bincount(test_labels, minlength=10)
    np.testing.assert_array_equal(np.bincount(train_labels, minlength=10) + test_counts, all_counts)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)  # stratified


def _as_multiset(images, labels) -> list:
    return sorted(zip((image.tobytes() for image in images.astype(np.uint8)), labels.tolist()))


def test_builder_matches_the_fixed_sklearn_split(data_dir):
    expected_images, expected_labels, _ = digits.stratified_split()["test"]
    images, labels = _split_arrays(data_dir, "test")
    assert _as_multiset(images, labels) == _as_multiset(expected_images, expected_labels)


def test_normalization_constants_are_the_training_split_statistics(data_dir):
    images, _ = _split_arrays(data_dir, "train")
    scaled = images.astype(np.float64) / 16.0
    assert scaled.mean() == pytest.approx(digits.DIGITS_MEAN, rel=1e-12)
    assert scaled.std() == pytest.approx(digits.DIGITS_STD, rel=1e-12)


def test_eval_batches_are_the_normalized_test_images_in_file_order(data_dir):
    split = data.make_split("digits", train=False, batch_size=100, data_dir=data_dir,
                            process_index=0, process_count=1)
    batches = list(split.epoch(0))
    images = np.concatenate([b["image"] for b in batches])[:360]
    labels = np.concatenate([b["label"] for b in batches])[:360]
    raw_images, raw_labels = _split_arrays(data_dir, "test")
    expected = (raw_images / 16.0 - digits.DIGITS_MEAN) / digits.DIGITS_STD
    np.testing.assert_allclose(images, expected, atol=1e-6)
    np.testing.assert_array_equal(labels, raw_labels)
    assert split.num_classes == 10 and split.input_shape == (8, 8, 1)


def test_train_augmentation_is_a_shift_by_at_most_one_pixel(data_dir):
    kwargs = dict(train=True, batch_size=64, seed=3, data_dir=data_dir, process_index=0, process_count=1)
    augmented = next(data.make_split("digits", augment=True, **kwargs).epoch(2))
    plain = next(data.make_split("digits", augment=False, **kwargs).epoch(2))
    np.testing.assert_array_equal(augmented["label"], plain["label"])  # same order either way

    def to_raw(x):
        return np.round((x * digits.DIGITS_STD + digits.DIGITS_MEAN) * 16.0).astype(np.int64)

    shifted = 0
    for moved, original in zip(to_raw(augmented["image"]), to_raw(plain["image"])):
        padded = np.pad(original, [(1, 1), (1, 1), (0, 0)])
        candidates = [padded[1 + dy:9 + dy, 1 + dx:9 + dx] for dy, dx in itertools.product((-1, 0, 1), repeat=2)]
        assert any(np.array_equal(moved, c) for c in candidates)
        shifted += not np.array_equal(moved, original)
    assert shifted > 32  # 8 of the 9 offsets move the image
