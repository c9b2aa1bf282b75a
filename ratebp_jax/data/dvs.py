"""CIFAR10-DVS built from its raw AEDAT 2.0 recordings, as a TFDS dataset.

Pipeline, one recording (`cifar10_<class>_<i>.aedat`) at a time:
    read_aedat       bytes -> events (x, y, t, p), SpikingJelly orientation
    events_to_frames events -> [10, 128, 128, 2] float32 event counts
    resize_frames    [10, 128, 128, 2] -> [10, 48, 48, 2] float32
The builder `Cifar10Dvs` (TFDS name "cifar10_dvs") stores the 48x48 frames;
`augment` is the training-time transform (h-flip, random roll), SPEC.md §6.
`DATASET` declares it for training: each example is a *sequence* of
NUM_FRAMES = 10 frames, used as given, so a config's ``timesteps`` must be 10
(``configuration.validate`` checks it). Default builder config "tebn":
samples 0-99 of each class test (1,000), the rest train (9,000). A shard is
held in host memory, 184 KB per example (float32 frames): about 1.7 GB for
the full train split. It is built once from the raw archives by
``python -m experiments.prepare --dataset cifar10_dvs --manual_dir DIR``.

Checked against public readers (read, not copied):
- SpikingJelly `spikingjelly/datasets/cifar10_dvs.py` (`_load_origin_data`):
  '#' header lines, then big-endian uint32 pairs (address, timestamp);
  x = (a & 0xFE) >> 1, y = (a & 0x7F00) >> 8, p = a & 1, returned as
  x' = 127 - y, y' = 127 - x, p' = 1 - p (orientation discussed in
  jackd/events-tfds PR #1); TEBN split = samples 0-99 of each class test.
- SpikingJelly `spikingjelly/datasets/utils.py`:
  `cal_fixed_frames_number_segment_index(split_by="number")` gives slice j
  the events [j*(N//T), (j+1)*(N//T)) except the LAST, which ends at N (it
  takes the N % T leftover events); `integrate_events_segment_to_frame`
  counts events per (p, y, x) with bincount.
- tonic `tonic/io.py` (`read_aedat_header_from_file`, `get_aer_events_from_file`,
  `read_dvs_128`): AER-DAT 2.x payload = [('address','>u4'), ('timeStamp',
  '>u4')], same bit fields (named the other way round, unflipped); the
  FloyedShen/tonic fork's `tonic/datasets/cifar10dvs.py` flips as SpikingJelly.
- Authors' release, Tab-ct/rate-based-backpropagation `util/data.py`
  (`CIFAR10_DVS_Aug`): each frame goes ToPILImage -> Resize((48, 48)) ->
  ToTensor, i.e. PIL's BILINEAR resize, which antialiases when shrinking
  (triangle filter widened by the scale factor). Training: flip the width
  axis with p = 0.5, then torch.roll by two independent ints in [-5, 5] on
  (H, W), the same for all frames. See `resize_frames` for what we do not copy.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
import re
import zipfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from ratebp_jax.data import pipeline

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
NUM_FRAMES = 10
SENSOR_SIZE = 128
FRAME_SIZE = 48
MAX_ROLL = 5
TEBN_NUM_TEST = 100  # samples 0..99 of each class form the test split
_RECORDING_NAME = re.compile(r"cifar10_(%s)_(\d+)\.aedat" % "|".join(CLASS_NAMES))

log = logging.getLogger(__name__)


def read_aedat(data: bytes, name: str):
    """Parses one AEDAT 2.0 recording of the DVS128 camera.

    Args:
      data: the whole file: '#'-prefixed header lines, then events as
        big-endian uint32 pairs (address, timestamp in microseconds).
      name: the file's name, used in error messages.
    Returns:
      (x, y, t, p), int64 arrays of shape [N], already in SpikingJelly's
      orientation: x, y in [0, 128) (column, row), p in {0, 1}.
    Raises:
      ValueError (naming the file) for an unterminated header, a payload that
      is not whole 8-byte events, or no events at all.
    """
    offset = 0  # DVS128 addresses are < 2**16, so no event starts with b"#"
    while data.startswith(b"#", offset):  # only the few header lines loop
        line_end = data.find(b"\n", offset)
        if line_end < 0:
            raise ValueError(f"{name}: header line at byte {offset} never ends; "
                             "the file is truncated. Re-extract or re-download it.")
        offset = line_end + 1
    payload_size = len(data) - offset
    if payload_size % 8:
        raise ValueError(f"{name}: {payload_size} bytes of events is not a whole "
                         "number of 8-byte events; the file is truncated or "
                         "corrupt. Re-extract or re-download it.")
    if payload_size == 0:
        raise ValueError(f"{name}: the file holds no events (truncated?).")
    words = np.frombuffer(data, dtype=">u4", offset=offset).astype(np.int64)
    address, t = words[0::2], words[1::2]
    raw_x = (address & 0xFE) >> 1
    raw_y = (address & 0x7F00) >> 8
    raw_p = address & 1
    return SENSOR_SIZE - 1 - raw_y, SENSOR_SIZE - 1 - raw_x, t, 1 - raw_p


def events_to_frames(x, y, p, num_frames: int = NUM_FRAMES,
                     size: int = SENSOR_SIZE) -> np.ndarray:
    """Integrates events into `num_frames` slices of equal event count.

    Slice j holds the events i with j·N/T <= i < (j+1)·N/T, so slice counts
    differ by at most one. (SpikingJelly's split_by="number" instead gives
    every slice N // T events and the last one the N % T leftovers too, at
    most T − 1 more events out of thousands.)

    Args:
      x, y, p: int arrays [N] (column, row, polarity), time-ordered.
    Returns:
      float32 [num_frames, size, size, 2]: frame[t, y, x, p] = event count.
    """
    x, y, p = (np.asarray(a, dtype=np.int64) for a in (x, y, p))
    if x.size and (min(x.min(), y.min()) < 0 or max(x.max(), y.max()) >= size
                   or p.min() < 0 or p.max() > 1):
        raise ValueError(f"events outside a {size}x{size} sensor or polarity "
                         "not in {0, 1}")
    bounds = -(-(np.arange(num_frames + 1) * x.size) // num_frames)  # ceil(j·N/T)
    slice_index = np.repeat(np.arange(num_frames), np.diff(bounds))
    flat = ((slice_index * size + y) * size + x) * 2 + p
    counts = np.bincount(flat, minlength=num_frames * size * size * 2)
    return counts.reshape(num_frames, size, size, 2).astype(np.float32)


def resize_frames(frames: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """Resizes [T, H, W, C] frames to [T, size, size, C] (float32).

    ``tf.image.resize(..., "bilinear", antialias=True)``: the triangle filter
    widened by the scale factor when shrinking, which is PIL's
    Image.resize(BILINEAR) (the authors' ToPILImage -> Resize path; the two
    agree to 2e-5 on 128 -> 48 event counts, tested), each channel on its own
    float counts. Not copied from the authors' path, on purpose: ToPILImage's
    `mul(255).byte()` uint8 cast (it wraps any count above 1) and the
    2-channel "LA" image that PIL resizes with premultiplied alpha (it scales
    polarity 0 by polarity 1).
    """
    frames = tf.constant(frames, tf.float32)
    return tf.image.resize(frames, [size, size], method="bilinear", antialias=True).numpy()


def augment(frames: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Training augmentation: random h-flip (p = 0.5), then a random roll.

    Args:
      frames: float32 [T, H, W, C], one sample.
      seed: int32/int64 [2], a stateless seed; the same seed gives the same
        output. The flip and the two shifts (ints in [-MAX_ROLL, MAX_ROLL] for
        H and W, wrapping around) are drawn once and applied to all T frames.
    Returns:
      float32 [T, H, W, C].
    """
    flip_seed, roll_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    flip = tf.random.stateless_uniform([], seed=flip_seed) < 0.5
    frames = tf.where(flip, tf.reverse(frames, axis=[2]), frames)
    shifts = tf.random.stateless_uniform([2], seed=roll_seed, minval=-MAX_ROLL,
                                         maxval=MAX_ROLL + 1, dtype=tf.int32)
    return tf.roll(frames, shift=shifts, axis=[1, 2])


@dataclass(frozen=True)
class Recording:
    """One `cifar10_<class_name>_<index>.aedat`: a file on disk (archive is
    None, path is its path) or a member `path` of the zip file `archive`."""
    class_name: str
    index: int
    archive: str | None
    path: str


def find_recordings(manual_dir) -> list[Recording]:
    """All CIFAR10-DVS recordings under `manual_dir`, in zips or extracted.

    Walks every folder below `manual_dir`, reads the member lists of `*.zip`
    files, and keeps names matching `cifar10_<class>_<i>.aedat`. A (class, i)
    seen twice (a zip and its extracted folder) is kept once, the first found
    (folders walked top-down, names sorted). Returns them sorted by
    (class order, index).
    """
    found: dict[tuple[str, int], Recording] = {}

    def add(base_name, archive, path):
        match = _RECORDING_NAME.fullmatch(base_name)
        if match:
            key = (match[1], int(match[2]))
            found.setdefault(key, Recording(key[0], key[1], archive, path))

    for folder, dirs, files in os.walk(os.fspath(manual_dir), followlinks=True):
        dirs.sort()
        for file_name in sorted(files):
            path = os.path.join(folder, file_name)
            if file_name.endswith(".zip"):
                try:
                    with zipfile.ZipFile(path) as archive:
                        members = archive.namelist()
                except zipfile.BadZipFile as error:
                    raise ValueError(f"{path}: not a readable zip ({error}); "
                                     "re-download it.") from error
                for member in sorted(members):
                    add(posixpath.basename(member), path, member)
                if any(m.endswith(".zip") for m in members):
                    log.warning("%s holds zip files; archives inside archives "
                                "are not read, extract it first.", path)
            else:
                add(file_name, None, path)
    return sorted(found.values(),
                  key=lambda r: (CLASS_NAMES.index(r.class_name), r.index))


def split_recordings(recordings, rule: str, seed: int = 0) -> dict:
    """Assigns recordings to {"train": [...], "test": [...]}.

    rule "tebn": index < 100 -> test, else train (TEBN / SpikingJelly).
    rule "random": per class, a permutation seeded by (seed, class id) puts
    (n + 5) // 10 of the class's n recordings (10 %, rounded half up) in test,
    the rest in train.
    """
    splits = {"train": [], "test": []}
    for class_id, class_name in enumerate(CLASS_NAMES):
        members = [r for r in recordings if r.class_name == class_name]
        if rule == "tebn":
            test = {r.index for r in members if r.index < TEBN_NUM_TEST}
        elif rule == "random":
            order = np.random.default_rng([seed, class_id]).permutation(len(members))
            test = {members[i].index for i in order[:(len(members) + 5) // 10]}
        else:
            raise ValueError(f"unknown split rule {rule!r}; use 'tebn' or 'random'")
        for r in members:
            splits["test" if r.index in test else "train"].append(r)
    return splits


def _read_all(recordings):
    """Yields (recording, file bytes), opening each zip once."""
    by_source = sorted(recordings, key=lambda r: (r.archive or "", r.path))
    for archive, group in itertools.groupby(by_source, key=lambda r: r.archive):
        if archive is None:
            for r in group:
                with open(r.path, "rb") as f:
                    yield r, f.read()
        else:
            with zipfile.ZipFile(archive) as opened:
                for r in group:
                    yield r, opened.read(r.path)


@dataclass(eq=False)
class Cifar10DvsConfig(tfds.core.BuilderConfig):
    """split_rule: "tebn" or "random" (see `split_recordings`)."""
    split_rule: str = "tebn"
    split_seed: int = 0


class Cifar10Dvs(tfds.core.GeneratorBasedBuilder):
    """CIFAR10-DVS as 10 event-count frames of 48x48 pixels, 2 polarities."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Frames from the raw AEDAT files."}
    BUILDER_CONFIGS = [
        Cifar10DvsConfig(name="tebn", split_rule="tebn", description=(
            "Samples 0-99 of each class -> test (1000), 100-999 -> train (9000).")),
        Cifar10DvsConfig(name="random_9_1", split_rule="random", split_seed=0,
                         description="Seeded random 9:1 train:test split per class."),
    ]
    DEFAULT_CONFIG_NAME = "tebn"
    # TFDS 4.9.10's DatasetBuilder.code_path needs `importlib_resources`, which
    # it declares only for Python < 3.9 (tensorflow/datasets#11212); say where
    # this builder lives directly. Harmless once that package is installed.
    code_path = epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the ten class archives of CIFAR10-DVS (about 7 GB in all):
    airplane.zip, automobile.zip, bird.zip, cat.zip, deer.zip, dog.zip,
    frog.zip, horse.zip, ship.zip, truck.zip, from
    https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 .
    Put them, as they are or extracted (any folder nesting), in the manual
    directory: `<data_dir>/downloads/manual/` by default, or the folder given as
    tfds.download.DownloadConfig(manual_dir=...). Every
    cifar10_<class>_<i>.aedat found there is read; nothing is downloaded.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=("CIFAR10-DVS (Li et al., 2017): DVS128 recordings of "
                         "CIFAR-10 images, split into 10 frames of equal event "
                         "count, counted per pixel and polarity, resized "
                         "128x128 -> 48x48 (antialiased bilinear)."),
            features=tfds.features.FeaturesDict({
                "frames": tfds.features.Tensor(
                    shape=(NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 2), dtype=np.float32,
                    encoding=tfds.features.Encoding.ZLIB),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            }),
            supervised_keys=("frames", "label"),
            homepage="https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671",
            citation=("@article{li2017cifar10, title={CIFAR10-DVS: An Event-Stream "
                      "Dataset for Object Classification}, author={Li, Hongmin and "
                      "Liu, Hanchao and Ji, Xiangyang and Li, Guoqi and Shi, Luping}, "
                      "journal={Frontiers in Neuroscience}, volume={11}, pages={309}, "
                      "year={2017}}"),
        )

    def _split_generators(self, dl_manager):
        manual_dir = dl_manager.manual_dir
        recordings = find_recordings(manual_dir)
        if not recordings:
            raise FileNotFoundError(
                f"No cifar10_<class>_<i>.aedat recordings found under {manual_dir} "
                "(neither in .zip files nor extracted)." + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        present = {r.class_name for r in recordings}
        missing = [c for c in CLASS_NAMES if c not in present]
        if missing:
            log.warning("CIFAR10-DVS: no recordings of %s under %s; building without "
                        "them.", ", ".join(missing), manual_dir)
        config = self.builder_config
        splits = split_recordings(recordings, config.split_rule, config.split_seed)
        for split_name, members in splits.items():
            if not members:
                raise ValueError(
                    f"Config {config.name!r} puts none of the {len(recordings)} "
                    f"recordings under {manual_dir} in the {split_name!r} split "
                    f"(rule {config.split_rule!r}); add the missing recordings.")
        return {name: self._generate_examples(members) for name, members in splits.items()}

    def _generate_examples(self, recordings):
        for r, data in _read_all(recordings):
            name = f"{r.archive}:{r.path}" if r.archive else r.path
            x, y, _, p = read_aedat(data, name)
            frames = resize_frames(events_to_frames(x, y, p))
            yield f"{r.class_name}_{r.index}", {"frames": frames, "label": r.class_name}


def eval_preprocess(frames: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """float32 [10, 48, 48, 2] unchanged; ``seed`` unused."""
    del seed
    return frames


DATASET = pipeline.Dataset(name="cifar10_dvs", tfds_name="cifar10_dvs", splits=("train", "test"),
                           input_shape=(NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 2),  # [T, H, W, polarity]
                           train_preprocess=augment, eval_preprocess=eval_preprocess)
