"""Tests for ratebp_jax/data/shd.py on small HDF5 files written here in the released layout."""

import logging

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

import ratebp_jax.data as data
from ratebp_jax.data import shd  # registers the "shd" builder

EDGES = np.linspace(0.0, shd.WINDOW_S, shd.NUM_FRAMES + 1)  # the default frames' edges


def write_shd_file(path, examples, time_dtype=np.float32):
    """An SHD release file: spikes/times and spikes/units as vlen arrays, labels; examples: [(times, units, label)]."""
    with h5py.File(path, "w") as file:
        spikes = file.create_group("spikes")
        times = spikes.create_dataset("times", (len(examples),), dtype=h5py.vlen_dtype(np.dtype(time_dtype)))
        units = spikes.create_dataset("units", (len(examples),), dtype=h5py.vlen_dtype(np.dtype(np.uint16)))
        for i, (t, u, _) in enumerate(examples):
            times[i], units[i] = np.asarray(t, time_dtype), np.asarray(u, np.uint16)
        file.create_dataset("labels", data=np.array([label for _, _, label in examples], np.uint16))


def random_events(rng, n, *, low=-0.2, high=1.7):
    """Unsorted spike times in [low, high) s (some outside the window) and channels 0..699."""
    return rng.uniform(low, high, n), rng.integers(0, shd.NUM_CHANNELS, n)


def histogram_frames(times, units, edges, num_channels=shd.NUM_CHANNELS):
    """NumPy's 2-D histogram over (time, channel); t == edges[-1] excluded (np.histogram closes the last bin)."""
    times = np.asarray(times, np.float64)
    inside = times != edges[-1]
    counts, _, _ = np.histogram2d(times[inside], units[inside], bins=[edges, np.arange(num_channels + 1)])
    return counts[:, None, :, None]


@pytest.mark.parametrize("num_frames, window_s", [(shd.NUM_FRAMES, shd.WINDOW_S), (7, 0.9)])
def test_frames_are_a_numpy_histogram_of_the_events(num_frames, window_s):
    rng = np.random.default_rng(num_frames)
    times, units = random_events(rng, 5000)
    edges = np.linspace(0.0, window_s, num_frames + 1)
    times[:num_frames + 1] = edges  # events exactly on every edge, the window's end included,
    units[:num_frames + 1] = np.arange(num_frames + 1)  # each on its own channel
    units[200:240] = 3  # one busy channel
    frames = shd.events_to_frames(times, units, num_frames=num_frames, window_s=window_s)
    assert frames.shape == (num_frames, 1, shd.NUM_CHANNELS, 1) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, histogram_frames(times, units, edges))
    inside = (times >= 0) & (times < window_s)
    assert frames.sum() == inside.sum() < len(times)  # everything outside [0, window_s) dropped


def test_window_edges_and_unsorted_times():
    times = np.array([-1e-3, 0.0, EDGES[1] - 1e-9, EDGES[1], shd.WINDOW_S - 1e-9, shd.WINDOW_S, shd.WINDOW_S + 0.5])
    units = np.array([5, 1, 2, 3, 4, 6, 7])
    frames = shd.events_to_frames(times, units)[:, 0, :, 0]
    kept = {tuple(index) for index in np.argwhere(frames)}
    # frame j holds [edge_j, edge_j+1); spikes before 0 s and from 1.4 s on (units 5, 6, 7) are dropped
    assert kept == {(0, 1), (0, 2), (1, 3), (shd.NUM_FRAMES - 1, 4)}
    assert frames.sum() == 4
    order = np.random.default_rng(0).permutation(len(times))
    np.testing.assert_array_equal(shd.events_to_frames(times[order], units[order])[:, 0, :, 0], frames)


def test_bad_events_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        shd.events_to_frames([0.1, 0.2], [1])
    with pytest.raises(ValueError, match=r"units must lie in \[0, 700\)"):
        shd.events_to_frames([0.1], [700])
    with pytest.raises(ValueError, match="more than uint8"):
        shd.events_to_frames(np.full(256, 0.5), np.zeros(256, int))


# Ten examples with labels 0..9 (one each), so that an example is found by its label.
def fake_examples(rng):
    examples = []
    for label in range(10):
        times, units = random_events(rng, int(rng.integers(50, 400)))
        examples.append((times, units, label))
    examples[0] = (np.zeros(0), np.zeros(0, int), 0)  # a silent example
    return examples[:6], examples[6:]  # train, test


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shd_manual")
    train, test = fake_examples(np.random.default_rng(1))
    write_shd_file(folder / "shd_train.h5", train, np.float32)
    write_shd_file(folder / "shd_test.h5", test, np.float16)  # times as stored, whatever the float width
    return folder, {"train": train, "test": test}


def test_builder_bins_each_example_and_keeps_its_label(manual_dir, tmp_path, caplog):
    folder, written = manual_dir
    with caplog.at_level(logging.INFO, logger=shd.__name__):
        builder = data.prepare("shd", data_dir=str(tmp_path), manual_dir=str(folder))
    assert "spikes outside [0, 1.4) s dropped" in caplog.text
    for split, examples in written.items():
        assert builder.info.splits[split].num_examples == len(examples)
        found = {}
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            assert example["frames"].shape == (100, 1, 700, 1) and example["frames"].dtype == np.uint8
            found[int(example["label"])] = example["frames"]
        assert sorted(found) == sorted(label for _, _, label in examples)  # labels kept, one per example
        for times, units, label in examples:
            stored_times = np.asarray(times, np.float32 if split == "train" else np.float16)
            np.testing.assert_array_equal(found[label], histogram_frames(stored_times, units, EDGES))
    split = data.make_split("shd", train=False, batch_size=4, data_dir=str(tmp_path), process_index=0,
                            process_count=1)
    batch = next(split.epoch(0))
    assert split.input_shape == (100, 1, 700, 1) and data.SEQUENCE_LENGTHS["shd"] == 100
    assert batch["image"].shape == (4, 100, 1, 700, 1) and batch["image"].dtype == np.float32
    for frames, label in zip(batch["image"], batch["label"]):
        np.testing.assert_array_equal(frames, found[int(label)])


def test_missing_files_say_what_to_put_where(tmp_path):
    """experiments.prepare prints a DataNotFoundError as one line "error: ..." and exits with status 2."""
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "shd_train.h5.gz").write_bytes(b"")
    with pytest.raises(data.DataNotFoundError, match="^shd_train.h5 is still gzipped in .*manual: gunzip [^\n]*$"):
        data.prepare("shd", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
    (manual / "shd_train.h5.gz").unlink()
    (manual / "notes.txt").write_text("not SHD")
    with pytest.raises(data.DataNotFoundError) as error:
        data.prepare("shd", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
    assert str(error.value) == (f"no shd_train.h5 in {manual}: put shd_train.h5 and shd_test.h5 there "
                                f"(shd_train.h5.gz and shd_test.h5.gz from {shd.DOWNLOAD_URL}, gunzipped)")
