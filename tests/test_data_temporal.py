"""The temporal digits tasks (SPEC §8): digits_rows and digits_latency are the
digits split, presented row by row or latency-coded, with no augmentation."""

import numpy as np
import pytest
import tensorflow as tf

import ratebp_jax.data as data
from ratebp_jax.data import digits, temporal

TEST, TRAIN = 360, 1437  # the digits split
TRAIN_BATCH = 479  # 3 · 479 = 1437: one train epoch is the whole split, nothing dropped


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir with sklearn_digits built (the same folder as test_data_digits uses)."""
    directory = str(tmp_path_factory.getbasetemp() / "tfds")
    data.make_split("digits", train=False, batch_size=TEST, data_dir=directory, process_index=0, process_count=1)
    return directory


@pytest.fixture(scope="module")
def digits_batches(data_dir) -> dict:
    """{"test"/"train": (images [N, 8, 8, 1], labels [N])}: digits' epoch 1 in pipeline order, not augmented."""
    return {split: _epoch("digits", data_dir, train=split == "train", augment=False)[1:] for split in ("test", "train")}


def _latency_code(raw):
    """int [N, 8, 8, 1] 0..16 -> [N, 8, 8, 8, 1]: a NumPy one-hot of round((1 − x/16)·7) along time."""
    steps = np.round((1 - raw / 16.0) * 7).astype(np.int64)
    return np.moveaxis(np.eye(8)[steps], -1, 1)


def _epoch(name, data_dir, *, train, augment=True, seed=5):
    split = data.make_split(name, train=train, batch_size=TRAIN_BATCH if train else TEST, seed=seed,
                            data_dir=data_dir, augment=augment, process_index=0, process_count=1)
    batches = list(split.epoch(1))
    return split, np.concatenate([b["image"] for b in batches]), np.concatenate([b["label"] for b in batches])


def _raw(normalized):
    """digits' normalized pixels back to the integers 0..16."""
    return np.round((normalized * digits.DIGITS_STD + digits.DIGITS_MEAN) * digits.MAX_VALUE).astype(np.int64)


def _sklearn_test_split():
    """load_digits images int [360, 8, 8] (0..16) and labels of digits' test split (split order, not file order)."""
    from sklearn.datasets import load_digits

    _, labels, indices = digits.stratified_split()["test"]
    loaded = load_digits()
    np.testing.assert_array_equal(loaded.target[indices], labels)
    return loaded.images[indices].astype(np.int64), labels


def _multiset(arrays, labels) -> list:
    """Examples as a sorted list of (bytes, label): TFDS stores a split in its own (fixed) order."""
    return sorted(zip((np.ascontiguousarray(a).tobytes() for a in arrays), np.asarray(labels).tolist()))


def test_rows_give_row_t_at_step_t(data_dir, digits_batches):
    split, rows, labels = _epoch("digits_rows", data_dir, train=False)
    images, digit_labels = digits_batches["test"]
    assert split.input_shape == (8, 1, 8, 1) == rows.shape[1:] and len(rows) == TEST
    assert data.SEQUENCE_LENGTHS["digits_rows"] == 8
    np.testing.assert_array_equal(labels, digit_labels)
    for t in range(8):  # step t is exactly the image's row t, normalized as digits
        np.testing.assert_array_equal(rows[:, t, 0, :, 0], images[:, t, :, 0])
    sklearn_images, sklearn_labels = _sklearn_test_split()  # the same digits, row t at step t
    assert _multiset(_raw(rows[:, :, 0, :, 0]), labels) == _multiset(sklearn_images, sklearn_labels)


def test_latency_steps_round_half_up_and_half_to_even_agree():
    values = np.arange(17)
    exact = (1 - values / 16) * 7  # exact in binary floating point: x / 16 is dyadic
    steps = temporal.latency_steps(tf.constant(values, tf.uint8)).numpy()
    np.testing.assert_array_equal(steps, np.floor(exact + 0.5))  # half up
    np.testing.assert_array_equal(steps, np.round(exact))  # NumPy: half to even
    assert exact[8] == 3.5 and steps[8] == 4  # the only tie
    assert steps[0] == 7 and steps[16] == 0  # blank pixel last, brightest first


def test_latency_fires_every_pixel_once_at_the_formula_step(data_dir, digits_batches):
    split, spikes, labels = _epoch("digits_latency", data_dir, train=False)
    assert split.input_shape == (8, 8, 8, 1) == spikes.shape[1:] and len(spikes) == TEST
    assert data.SEQUENCE_LENGTHS["digits_latency"] == 8
    assert set(np.unique(spikes)) == {0.0, 1.0}
    np.testing.assert_array_equal(spikes.sum(axis=1), 1.0)  # exactly one spike per pixel
    np.testing.assert_array_equal(spikes.mean(axis=1), 1 / 8)  # every input's rate is 1/T
    images, digit_labels = digits_batches["test"]
    np.testing.assert_array_equal(labels, digit_labels)
    np.testing.assert_array_equal(spikes, _latency_code(_raw(images)))
    steps = spikes.argmax(axis=1)  # [N, 8, 8, 1]
    sklearn_images, sklearn_labels = _sklearn_test_split()
    assert _multiset(steps[..., 0], labels) == _multiset(np.round((1 - sklearn_images / 16.0) * 7).astype(np.int64),
                                                         sklearn_labels)


@pytest.mark.parametrize("name", ["digits_rows", "digits_latency"])
def test_train_split_is_digits_in_the_same_order_without_augmentation(data_dir, digits_batches, name):
    _, sequences, labels = _epoch(name, data_dir, train=True, augment=True)
    _, plain, plain_labels = _epoch(name, data_dir, train=True, augment=False)
    np.testing.assert_array_equal(sequences, plain)  # augment=True changes nothing
    images, digit_labels = digits_batches["train"]
    assert len(sequences) == TRAIN
    np.testing.assert_array_equal(labels, digit_labels)
    np.testing.assert_array_equal(plain_labels, digit_labels)
    if name == "digits_rows":  # the same examples as digits, in its order
        np.testing.assert_array_equal(sequences, images.reshape(TRAIN, 8, 1, 8, 1))
    else:
        np.testing.assert_array_equal(sequences, _latency_code(_raw(images)))
