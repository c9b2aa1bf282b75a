"""CIFAR-10, spiking ResNet-19, rate_m, T = 4: the recipe of SPEC §6 (reference).

    python -m experiments.train --config configs/cifar10_resnet19.py --workdir runs/c10_r19
    python -m experiments.train --config configs/cifar10_resnet19.py:smoke --workdir /tmp/smoke

300 epochs of 390 steps at batch 128. The paper's best CIFAR-10 result over
its models and T is 96.26% top-1; this config has not been run to completion
here (CPU only, no CIFAR files).
"""

from configs import common


def get_config(variant: str = ""):
    config = common.base(dataset="cifar10", model="resnet19", timesteps=4, batch_size=128, num_epochs=300,
                         learning_rate=0.1, weight_decay=5e-4)
    return common.with_variant(config, variant)
