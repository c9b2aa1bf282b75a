"""CIFAR10-DVS, VGGSNN (vggsnn_dvs), rate_m, T = 10: the recipe of SPEC §6 (reference).

    python -m experiments.train --config configs/cifar10_dvs_vggsnn.py --workdir runs/dvs_vggsnn \
        --config.manual_dir=/path/to/cifar10_dvs_archives
    python -m experiments.train --config configs/cifar10_dvs_vggsnn.py:smoke --workdir /tmp/smoke \
        --config.manual_dir=/path/to/cifar10_dvs_archives

manual_dir is the folder holding the raw recordings: the ten class archives
airplane.zip ... truck.zip (about 7 GB) from
https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671, as downloaded
or extracted, any nesting ("" = DATA_DIR/downloads/manual). The first run
reads every recording once and prepares TFDS "cifar10_dvs" (split "tebn":
samples 0-99 of each class test, 1,000; the rest train, 9,000) in data_dir;
later runs read only data_dir. Each example is a sequence of 10 event-count
frames [10, 48, 48, 2], so timesteps must stay 10 (a config check says so),
and the smoke variant keeps T = 10. The training split is held in host
memory (about 1.7 GB).

300 epochs of 70 steps at batch 128, SGD momentum 0.9, learning rate 0.1
cosine-annealed to 0, weight decay 5e-4; h-flip (p = 1/2) and random roll by
up to ±5 px. The paper's best CIFAR10-DVS result is 76.96% top-1; this config
has not been run here (CPU only, no CIFAR10-DVS files).
"""

from configs import common

FRAMES = 10  # frames per CIFAR10-DVS example (ratebp_jax.data.SEQUENCE_LENGTHS["cifar10_dvs"])


def get_config(variant: str = ""):
    config = common.base(dataset="cifar10_dvs", model="vggsnn_dvs", timesteps=FRAMES, batch_size=128,
                         num_epochs=300, learning_rate=0.1, weight_decay=5e-4)
    config = common.with_variant(config, variant)
    config.timesteps = FRAMES  # the sequences are used as given: the smoke variant must not shrink T
    return config
