"""Downloads or builds one dataset with TFDS, so that training can read it.

    python -m experiments.prepare --config configs/cifar10_resnet18.py   # the config's dataset, data_dir, manual_dir
    python -m experiments.prepare --dataset cifar10 [--data_dir DIR]
    python -m experiments.prepare --dataset imagenet2012 --manual_dir DIR   # ILSVRC2012_img_{train,val}.tar in DIR
    python -m experiments.prepare --dataset shd --manual_dir DIR            # shd_train.h5, shd_test.h5 in DIR

TFDS shows its progress; a prepared dataset is left as it is, so rerunning is
safe (an interrupted build starts again: TFDS writes to a temporary folder
first). imagenet2012, cifar10_dvs and shd (shd_train.h5 and shd_test.h5,
gunzipped) are built from files downloaded by hand:
without them in the manual directory (default DATA_DIR/downloads/manual) the
command says which files to put there and where to get them, and exits with
status 2. digits (and digits_rows, digits_latency, made from it) ships inside
scikit-learn and needs no preparing (it builds itself on first use), but
preparing it does no harm.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file; its dataset, data_dir and "
                                          "manual_dir are the defaults of the flags below.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset name (ratebp_jax.data.DATASETS).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's, ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder of the files downloaded by hand "
                                  "(default: DATA_DIR/downloads/manual).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    name = _DATASET.value or (config.dataset if config else None)
    if not name:
        raise app.UsageError("give --config or --dataset")
    data_dir = _DATA_DIR.value or (config.data_dir if config else "") or None
    manual_dir = _MANUAL_DIR.value or (config.manual_dir if config else "") or None
    report.quiet_library_logs()
    import tensorflow_datasets as tfds

    from ratebp_jax import data

    if name not in data.DATASETS:
        print(f"error: dataset must be one of {data.DATASETS}, got {name!r}", file=sys.stderr)
        sys.exit(2)
    tfds.display_progress_bar(True)
    try:
        builder = data.prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    except data.DataNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    splits = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    print(f"{name}: prepared in {builder.data_dir} ({splits} examples)")


if __name__ == "__main__":
    app.run(main)
