"""Tests for ratebp_jax/data/dvs.py on tiny AEDAT 2.0 files written here."""

import logging
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ratebp_jax.data import dvs  # registers the "cifar10_dvs" builder

HEADER = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n#\r\n"


def encode_aedat(raw_x, raw_y, raw_p, t, header=HEADER):
    """AEDAT 2.0 bytes: header, then big-endian (address, timestamp) pairs."""
    address = (np.asarray(raw_y, np.uint32) << 8) | (np.asarray(raw_x, np.uint32) << 1)
    address |= np.asarray(raw_p, np.uint32)
    return header + np.stack([address, np.asarray(t, np.uint32)], 1).astype(">u4").tobytes()


def random_raw_events(rng, n):
    return (rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
            np.sort(rng.integers(0, 2**32, n, dtype=np.uint64)))


def test_read_aedat_round_trip_with_orientation():
    rng = np.random.default_rng(0)
    raw_x, raw_y, raw_p, t = random_raw_events(rng, 1000)
    x, y, t_read, p = dvs.read_aedat(encode_aedat(raw_x, raw_y, raw_p, t), "a.aedat")
    np.testing.assert_array_equal(x, 127 - raw_y)
    np.testing.assert_array_equal(y, 127 - raw_x)
    np.testing.assert_array_equal(p, 1 - raw_p)
    np.testing.assert_array_equal(t_read, t)
    # No header at all is also a valid file.
    x2, *_ = dvs.read_aedat(encode_aedat(raw_x, raw_y, raw_p, t, header=b""), "b")
    np.testing.assert_array_equal(x2, x)


def frames_by_loop(x, y, p, num_frames, size):
    """Per-event loop; event i goes to the slice j with j·n/T <= i < (j+1)·n/T."""
    n = len(x)
    bounds = [(-(-j * n // num_frames), -(-(j + 1) * n // num_frames)) for j in range(num_frames)]
    frames = np.zeros((num_frames, size, size, 2), np.float32)
    for j, (start, stop) in enumerate(bounds):
        for i in range(start, stop):
            frames[j, y[i], x[i], p[i]] += 1
    return frames


@pytest.mark.parametrize("n", [0, 7, 10, 999, 1000, 2345])
def test_events_to_frames_matches_loop(n):
    rng = np.random.default_rng(n)
    size = 16
    x, y, p = rng.integers(0, size, n), rng.integers(0, size, n), rng.integers(0, 2, n)
    frames = dvs.events_to_frames(x, y, p, num_frames=10, size=size)
    assert frames.shape == (10, size, size, 2) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames, frames_by_loop(x, y, p, 10, size))
    per_slice = frames.sum(axis=(1, 2, 3))
    assert per_slice.max() - per_slice.min() <= 1 and per_slice.sum() == n


def test_resize_frames_is_pil_bilinear():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    frames = rng.poisson(2.0, (3, 128, 128, 2)).astype(np.float32)
    out = dvs.resize_frames(frames)
    assert out.shape == (3, 48, 48, 2) and out.dtype == np.float32
    for t in range(3):
        for c in range(2):
            pil = Image.fromarray(frames[t, :, :, c]).resize((48, 48), Image.BILINEAR)
            np.testing.assert_allclose(out[t, :, :, c], np.asarray(pil), atol=1e-5)


@pytest.mark.parametrize("data, problem", [
    (b"#!AER-DAT2.0", "never ends"),                   # header cut off
    (HEADER + b"\x00" * 12, "not a whole number"),     # one and a half events
    (HEADER + b"\x00" * 4, "not a whole number"),      # odd number of words
    (HEADER, "no events"),
])
def test_broken_files_raise_naming_the_file(data, problem):
    with pytest.raises(ValueError, match=f"broken_7.aedat.*{problem}"):
        dvs.read_aedat(data, "broken_7.aedat")


def test_augment_is_a_seeded_flip_and_roll_of_all_frames():
    rng = np.random.default_rng(2)
    frames = rng.random((4, 12, 16, 2)).astype(np.float32)
    graph_augment = tf.function(dvs.augment)
    seen = set()
    for s in range(24):
        seed = tf.constant([s, 7], tf.int64)
        out = dvs.augment(tf.constant(frames), seed).numpy()
        np.testing.assert_array_equal(out, dvs.augment(tf.constant(frames), seed).numpy())
        np.testing.assert_array_equal(out, graph_augment(tf.constant(frames), seed).numpy())
        matches = [(flip, dy, dx) for flip in (False, True)
                   for dy in range(-5, 6) for dx in range(-5, 6)
                   if np.array_equal(out, np.roll(frames[:, :, ::-1] if flip else frames,
                                                  (dy, dx), axis=(1, 2)))]
        assert len(matches) == 1, f"seed {s}: not one flip+roll of the input"
        seen.add(matches[0])
    assert {flip for flip, _, _ in seen} == {False, True}
    assert len({(dy, dx) for _, dy, dx in seen}) > 5


# Two classes (labels 0 and 3), 20 recordings each, indices 90..109: the TEBN
# rule (0..99 -> test) gives 10 test + 10 train per class; random 9:1 gives 2 + 18.
FAKE_CLASSES = ("airplane", "cat")
FAKE_INDICES = range(90, 110)


def write_fake_archive(manual_dir, rng):
    """airplane.zip holding airplane/cifar10_airplane_i.aedat, and cat as an
    extracted folder nested deeper; returns the frames each recording should
    become, keyed by (label, index)."""
    expected = {}
    extracted = manual_dir / "extracted" / "cat"
    extracted.mkdir(parents=True)
    with zipfile.ZipFile(manual_dir / "airplane.zip", "w") as archive:
        for name in FAKE_CLASSES:
            for i in FAKE_INDICES:
                data = encode_aedat(*random_raw_events(rng, int(rng.integers(20, 60))))
                file_name = f"cifar10_{name}_{i}.aedat"
                if name == "airplane":
                    archive.writestr(f"{name}/{file_name}", data)
                else:
                    (extracted / file_name).write_bytes(data)
                x, y, _, p = dvs.read_aedat(data, file_name)
                label = dvs.CLASS_NAMES.index(name)
                expected[label, i] = dvs.resize_frames(dvs.events_to_frames(x, y, p))
    return expected


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory):
    manual_dir = tmp_path_factory.mktemp("manual")
    return manual_dir, write_fake_archive(manual_dir, np.random.default_rng(3))


@pytest.mark.parametrize("config, sizes", [("tebn", {"train": 20, "test": 20}),
                                           ("random_9_1", {"train": 36, "test": 4})])
def test_builder_from_zip_and_folder(fake_archive, tmp_path, caplog, config, sizes):
    manual_dir, expected = fake_archive
    builder = tfds.builder("cifar10_dvs", data_dir=str(tmp_path), config=config)
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    assert "truck" in caplog.text  # missing classes are named in a warning
    assert builder.info.features["label"].names == list(dvs.CLASS_NAMES)
    seen = set()
    for split, size in sizes.items():
        assert builder.info.splits[split].num_examples == size
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            frames, label = example["frames"], int(example["label"])
            assert frames.shape == (10, 48, 48, 2) and frames.dtype == np.float32
            keys = [k for k, v in expected.items() if np.allclose(v, frames, atol=1e-6)]
            assert len(keys) == 1 and keys[0][0] == label
            if config == "tebn":
                assert (keys[0][1] < 100) == (split == "test")
            seen.add(keys[0])
    assert seen == set(expected)  # every recording exactly once across splits


def test_find_recordings_reads_folders_and_drops_duplicates(tmp_path):
    rng = np.random.default_rng(4)
    data = encode_aedat(*random_raw_events(rng, 30))
    nested = tmp_path / "downloads" / "extracted" / "bird"
    nested.mkdir(parents=True)
    for i in range(3):
        (nested / f"cifar10_bird_{i}.aedat").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "bird.zip", "w") as archive:
        for i in range(2, 5):
            archive.writestr(f"bird/cifar10_bird_{i}.aedat", data)
    (tmp_path / "notes.txt").write_text("not a recording")
    found = dvs.find_recordings(tmp_path)
    assert [(r.class_name, r.index) for r in found] == [("bird", i) for i in range(5)]
    random_split = dvs.split_recordings(found, "random", seed=0)
    assert random_split == dvs.split_recordings(found, "random", seed=0)
    assert len(random_split["test"]) == 1 and len(random_split["train"]) == 4


def test_builder_errors_clearly_without_data(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    builder = tfds.builder("cifar10_dvs", data_dir=str(tmp_path / "data"))
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    # An empty manual dir: TFDS itself stops and prints our instructions.
    with pytest.raises(AssertionError, match="(?s)is empty.*airplane.zip"):
        builder.download_and_prepare(download_config=config)
    # Files, but no recordings: our error names the directory.
    (manual_dir / "readme.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match=f"No cifar10_<class>_<i>.aedat.*{manual_dir}"):
        builder.download_and_prepare(download_config=config)
