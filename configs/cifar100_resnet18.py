"""CIFAR-100, spiking ResNet-18, rate_m, T = 4: the recipe of SPEC §6 (reference).

    python -m experiments.train --config configs/cifar100_resnet18.py --workdir runs/c100_r18
    python -m experiments.train --config configs/cifar100_resnet18.py:smoke --workdir /tmp/smoke

300 epochs of 390 steps at batch 128. The paper's best CIFAR-100 result over
its models and T is 80.71% top-1; this config has not been run to completion
here (CPU only, no CIFAR files).
"""

from configs import common


def get_config(variant: str = ""):
    config = common.base(dataset="cifar100", model="resnet18", timesteps=4, batch_size=128, num_epochs=300,
                         learning_rate=0.1, weight_decay=5e-4)
    return common.with_variant(config, variant)
