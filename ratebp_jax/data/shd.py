"""The Spiking Heidelberg Digits (SHD; Cramer et al., IEEE TNNLS 2020) as TFDS event-count frames.

Source: the released HDF5 files shd_train.h5 and shd_test.h5 (gzipped as
shd_train.h5.gz / shd_test.h5.gz at https://zenkelab.org/datasets/), read from
the manual directory; nothing is downloaded. Their layout, per example i:
    spikes/times[i]  float array [n_i], spike times in seconds (vlen)
    spikes/units[i]  uint16 array [n_i], the channel of each spike, 0..699 (vlen)
    labels[i]        the class, 0..19 (ten digits spoken in English and in German)
The files' own split is kept: "train" and "test". SHD has no validation split.

Binning (``events_to_frames``), builder config "t100_1400ms" (the default):
NUM_FRAMES = 100 frames over a fixed window of WINDOW_S = 1.4 s from t = 0,
14 ms each. Frame j counts the events with edges[j] <= t < edges[j + 1],
edges = np.linspace(0, 1.4, 101) in float64 (times are cast to float64
first). Events before 0 s or at or after 1.4 s are dropped, not folded into
the first or last frame (the builder logs how many, per split). Each event is
counted by its own time, so unsorted times need no sorting and give the same
frames. The 1.4 s window and 100 steps are those of the dataset authors' own
tutorial (fzenke/spytorch, Tutorial 4: ``max_time = 1.4``, ``nb_steps = 100``);
the window holds the spoken digits, and 100 steps keep a feedforward SNN's
BPTT memory (T·B·layer sizes) small on a CPU or one GPU while a 14 ms frame
still resolves the order of the sounds.

Stored: uint8 counts [100, 1, 700, 1] per example (layout [T, H, W, C] =
[time, 1, channel, 1]: the 700 channels as one image row); a count above 255
in one frame and channel is refused at build time rather than wrapped. About
70 KB per example in host memory, the train split about 0.6 GB. ``DATASET``
("shd") feeds them as float32 counts, the same for training and evaluation:
no augmentation. Build once with
``python -m experiments.prepare --dataset shd --manual_dir DIR``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from ratebp_jax.data import pipeline

NUM_CHANNELS = 700  # input channels of the cochlea model
NUM_CLASSES = 20
NUM_FRAMES = 100  # T of the default config
WINDOW_S = 1.4  # seconds binned, from t = 0, in the default config
MAX_COUNT = 255  # uint8 storage
FILES = {"train": "shd_train.h5", "test": "shd_test.h5"}
DOWNLOAD_URL = "https://zenkelab.org/datasets/"

log = logging.getLogger(__name__)


def events_to_frames(times, units, *, num_frames: int = NUM_FRAMES, window_s: float = WINDOW_S,
                     num_channels: int = NUM_CHANNELS) -> np.ndarray:
    """Counts one example's spikes per frame and channel.

    Args:
      times: float [N], spike times in seconds, in any order.
      units: int [N], the channel of each spike, 0 <= unit < num_channels.
      num_frames, window_s: frame j covers [j, j + 1) · window_s / num_frames
        (edges from np.linspace in float64); spikes outside [0, window_s) are
        dropped.
    Returns:
      uint8 [num_frames, 1, num_channels, 1] event counts.
    Raises:
      ValueError: times and units differ in length, a unit is out of range,
        or a count exceeds 255.
    """
    times = np.asarray(times, np.float64).reshape(-1)
    units = np.asarray(units, np.int64).reshape(-1)
    if times.shape != units.shape:
        raise ValueError(f"times ({times.size}) and units ({units.size}) differ in length")
    if units.size and (units.min() < 0 or units.max() >= num_channels):
        raise ValueError(f"units must lie in [0, {num_channels}), got [{units.min()}, {units.max()}]")
    edges = np.linspace(0.0, window_s, num_frames + 1)
    frame = np.searchsorted(edges, times, side="right") - 1  # -1 before 0, num_frames from window_s on
    kept = (frame >= 0) & (frame < num_frames)
    counts = np.bincount(frame[kept] * num_channels + units[kept], minlength=num_frames * num_channels)
    if counts.max(initial=0) > MAX_COUNT:
        raise ValueError(f"a frame holds {counts.max()} spikes of one channel, more than uint8's {MAX_COUNT}; "
                         "use longer frames or wider storage")
    return counts.astype(np.uint8).reshape(num_frames, 1, num_channels, 1)


def read_examples(path):
    """Yields (index, times float [n], units uint16 [n], label int) from one SHD HDF5 file, in file order.

    Raises ValueError naming the file if its three arrays differ in length.
    """
    import h5py  # only when building

    with h5py.File(path, "r") as file:
        times, units, labels = file["spikes"]["times"], file["spikes"]["units"], file["labels"]
        if not len(times) == len(units) == len(labels):
            raise ValueError(f"{path}: spikes/times ({len(times)}), spikes/units ({len(units)}) and labels "
                             f"({len(labels)}) must have one entry per example")
        for index in range(len(labels)):
            yield index, times[index], units[index], int(labels[index])


def find_files(manual_dir) -> dict[str, str]:
    """{"train": path, "test": path} of FILES in manual_dir.

    Raises:
      pipeline.DataNotFoundError: one line naming the missing file, the
        folder and what to put there (a gzipped file found: gunzip it).
    """
    paths = {}
    for split, name in FILES.items():
        path = os.path.join(os.fspath(manual_dir), name)
        if not os.path.isfile(path):
            if os.path.isfile(path + ".gz"):
                raise pipeline.DataNotFoundError(f"{name} is still gzipped in {manual_dir}: gunzip {name}.gz there")
            raise pipeline.DataNotFoundError(
                f"no {name} in {manual_dir}: put shd_train.h5 and shd_test.h5 there "
                f"(shd_train.h5.gz and shd_test.h5.gz from {DOWNLOAD_URL}, gunzipped)")
        paths[split] = path
    return paths


@dataclass(eq=False)
class ShdConfig(tfds.core.BuilderConfig):
    """num_frames frames of window_s / num_frames seconds each, from t = 0 (see ``events_to_frames``)."""
    num_frames: int = NUM_FRAMES
    window_s: float = WINDOW_S


class Shd(tfds.core.GeneratorBasedBuilder):
    """SHD as event-count frames [T, 1, 700, 1] (TFDS name "shd")."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Frames binned from the released HDF5 files (SHD v1.0)."}
    BUILDER_CONFIGS = [ShdConfig(name="t100_1400ms", description=(
        "100 frames of 14 ms over [0, 1.4) s; spikes outside dropped."))]
    DEFAULT_CONFIG_NAME = "t100_1400ms"
    # TFDS 4.9.10's DatasetBuilder.code_path needs `importlib_resources` (see dvs.py); say where we live.
    code_path = epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download shd_train.h5.gz and shd_test.h5.gz (Spiking Heidelberg Digits)
    from {DOWNLOAD_URL}, gunzip them, and put shd_train.h5 and shd_test.h5 in
    the manual directory: `<data_dir>/downloads/manual/` by default, or the
    folder given as tfds.download.DownloadConfig(manual_dir=...).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=(f"Spiking Heidelberg Digits: spikes of {NUM_CHANNELS} cochlea-model channels for "
                         f"spoken digits, {NUM_CLASSES} classes, counted in {config.num_frames} frames over "
                         f"[0, {config.window_s}) s."),
            features=tfds.features.FeaturesDict({
                "frames": tfds.features.Tensor(shape=(config.num_frames, 1, NUM_CHANNELS, 1), dtype=np.uint8,
                                               encoding=tfds.features.Encoding.ZLIB),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }),
            supervised_keys=("frames", "label"),
            homepage="https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/",
            citation=("@article{cramer2020heidelberg, title={The Heidelberg Spiking Data Sets for the "
                      "Systematic Evaluation of Spiking Neural Networks}, author={Cramer, Benjamin and "
                      "Stradmann, Yannik and Schemmel, Johannes and Zenke, Friedemann}, journal={IEEE "
                      "Transactions on Neural Networks and Learning Systems}, year={2020}}"),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(path) for split, path in find_files(dl_manager.manual_dir).items()}

    def _generate_examples(self, path):
        config = self.builder_config
        total = dropped = 0
        for index, times, units, label in read_examples(path):
            try:
                frames = events_to_frames(times, units, num_frames=config.num_frames, window_s=config.window_s)
            except ValueError as error:
                raise ValueError(f"{path}, example {index}: {error}") from None
            total += len(times)
            dropped += len(times) - int(frames.sum(dtype=np.int64))
            yield index, {"frames": frames, "label": label}
        log.info("%s: %d of %d spikes outside [0, %g) s dropped", path, dropped, total, config.window_s)


def preprocess(frames: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 [100, 1, 700, 1] counts -> float32; ``seed`` unused (no augmentation)."""
    del seed
    return tf.cast(frames, tf.float32)


DATASET = pipeline.Dataset(name="shd", tfds_name="shd", splits=("train", "test"),
                           input_shape=(NUM_FRAMES, 1, NUM_CHANNELS, 1),  # [T, 1, channel, 1]
                           train_preprocess=preprocess, eval_preprocess=preprocess)
