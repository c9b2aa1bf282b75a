"""The split/epoch/batch/shard machinery (ratebp_jax.data.pipeline) through
make_split on the embedded digits dataset, and the errors of make_split."""

import numpy as np
import pytest

import ratebp_jax.data as data
from ratebp_jax.data import digits


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir with sklearn_digits built (shared by the modules of one session)."""
    directory = str(tmp_path_factory.getbasetemp() / "tfds")
    data.make_split("digits", train=False, batch_size=360, data_dir=directory, process_index=0, process_count=1)
    return directory


def _split(data_dir, *, train=True, batch_size=64, seed=0, augment=True, process_index=0, process_count=1):
    return data.make_split("digits", train=train, batch_size=batch_size, seed=seed, data_dir=data_dir,
                           augment=augment, process_index=process_index, process_count=process_count)


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys() == {"image", "label", "mask"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _raw_pixels(normalized: np.ndarray) -> np.ndarray:
    """Undoes the digits normalization: the integer pixel values 0..16."""
    return np.round((normalized * digits.DIGITS_STD + digits.DIGITS_MEAN) * 16.0).astype(np.uint8)


def _real_rows(batches) -> list:
    """(raw image bytes, label) of every mask-1 row, as a sorted multiset."""
    rows = []
    for batch in batches:
        keep = batch["mask"] == 1.0
        images = _raw_pixels(batch["image"][keep])
        rows += zip((image.tobytes() for image in images), batch["label"][keep].tolist())
    return sorted(rows)


def test_train_batches_have_the_contract_shapes_and_drop_the_remainder(data_dir):
    split = _split(data_dir)
    assert (split.num_examples, split.steps_per_epoch) == (1437, 1437 // 64)
    batches = list(split.epoch(0))
    assert len(batches) == 22
    for batch in batches:
        assert batch["image"].dtype == np.float32 and batch["image"].shape == (64, 8, 8, 1)
        assert batch["label"].dtype == np.int32 and batch["label"].shape == (64,)
        assert batch["mask"].dtype == np.float32 and np.all(batch["mask"] == 1.0)


def test_same_seed_and_epoch_give_identical_batches_in_a_fresh_split(data_dir):
    _assert_same_batches(list(_split(data_dir, seed=5).epoch(3)), list(_split(data_dir, seed=5).epoch(3)))


def test_epoch_and_seed_change_the_order(data_dir):
    def labels(seed, epoch):  # 1437 = 3 · 479: every example in every epoch
        split = _split(data_dir, seed=seed, augment=False, batch_size=479)
        return np.concatenate([batch["label"] for batch in split.epoch(epoch)])

    reference = labels(0, 0)
    for other in (labels(0, 1), labels(1, 0)):
        assert not np.array_equal(reference, other)
        np.testing.assert_array_equal(np.bincount(reference), np.bincount(other))  # same examples


def test_start_step_equals_skipping_the_first_steps(data_dir):
    split = _split(data_dir, seed=2)
    full = list(split.epoch(4))
    _assert_same_batches(list(split.epoch(4, start_step=15)), full[15:])
    assert list(split.epoch(4, start_step=split.steps_per_epoch)) == []
    with pytest.raises(ValueError, match="start_step"):
        next(split.epoch(4, start_step=split.steps_per_epoch + 1))


def test_eval_covers_every_test_example_once_and_pads_with_mask_zero(data_dir):
    split = _split(data_dir, train=False, batch_size=64)
    batches = list(split.epoch(0))
    assert split.steps_per_epoch == len(batches) == 6  # ceil(360 / 64)
    last = batches[-1]
    assert last["mask"].sum() == 360 - 5 * 64
    padding = last["mask"] == 0.0
    assert np.all(last["image"][padding] == 0.0) and np.all(last["label"][padding] == 0)
    raw_images, raw_labels, _ = digits.stratified_split()["test"]
    expected = sorted(zip((image.tobytes() for image in raw_images), raw_labels.tolist()))
    assert _real_rows(batches) == expected
    _assert_same_batches(batches, list(split.epoch(7)))  # eval order does not depend on the epoch


@pytest.mark.parametrize("train", [True, False])
def test_processes_read_slices_of_the_one_process_global_batches(data_dir, train):
    # 2 processes x batch 100 read, at every step, the two halves of the one-process batch of 200:
    # each device sees what it would in a one-process run, augmentation included.
    one = list(_split(data_dir, train=train, batch_size=200).epoch(1))
    shards = [_split(data_dir, train=train, batch_size=100, process_index=i, process_count=2) for i in range(2)]
    assert [s.steps_per_epoch for s in shards] == [len(one)] * 2 == [1437 // 200 if train else 2] * 2
    for whole, *halves in zip(one, *(s.epoch(1) for s in shards)):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_uneven_eval_shards_run_the_same_number_of_steps(data_dir):
    # 360 examples, global batch 7 x 51 = 357: 2 steps; the second has 3 real examples, all in process 0.
    shards = [_split(data_dir, train=False, batch_size=51, process_index=i, process_count=7) for i in range(7)]
    batches = [list(shard.epoch(0)) for shard in shards]
    assert [len(b) for b in batches] == [s.steps_per_epoch for s in shards] == [2] * 7
    assert [b[1]["mask"].sum() for b in batches] == [3, 0, 0, 0, 0, 0, 0]
    assert sorted(sum((_real_rows(b) for b in batches), [])) == _real_rows(_split(data_dir, train=False).epoch(0))


def test_make_split_rejects_bad_arguments(data_dir):
    with pytest.raises(ValueError, match=r"dataset must be one of .*digits.*cifar10.*, got 'mnist'"):
        data.make_split("mnist", train=True, batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        data.make_split("digits", train=True, batch_size=0, data_dir=data_dir)
    with pytest.raises(ValueError, match=r"global batch of 2000 \(batch_size 1000 × 2 processes\) exceeds the 1437"):
        _split(data_dir, batch_size=1000, process_index=1, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        _split(data_dir, process_index=2, process_count=2)


def test_unprepared_cifar_raises_data_not_found_naming_the_directory_and_the_command(tmp_path):
    empty = tmp_path / "empty_tfds"
    with pytest.raises(data.DataNotFoundError) as caught:  # at once: nothing is downloaded
        data.make_split("cifar10", train=True, batch_size=8, data_dir=str(empty),
                        process_index=0, process_count=1)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(caught.value) == (f"dataset 'cifar10' is not prepared in {empty}; prepare it once with: "
                                 f"python -m experiments.prepare --dataset cifar10 --data_dir {empty}")
    assert not empty.exists()


def test_digits_build_themselves_on_first_use(tmp_path):
    split = data.make_split("digits", train=False, batch_size=360, data_dir=str(tmp_path),
                            process_index=0, process_count=1)
    assert split.num_examples == 360 and (tmp_path / digits.TFDS_NAME).is_dir()
