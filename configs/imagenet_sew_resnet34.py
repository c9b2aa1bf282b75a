"""ImageNet-1k, SEW ResNet-34, rate_m, T = 4: the recipe of SPEC §6 (reference).

    python -m experiments.train --config configs/imagenet_sew_resnet34.py --workdir runs/in_sew34 \
        --config.data_dir=/data/tfds --config.manual_dir=/data/imagenet_tars

Needs ILSVRC2012_img_{train,val}.tar in manual_dir (TFDS imagenet2012, manual
download). 100 epochs at batch 512 over all devices; bfloat16 is advised on
GPU/TPU (--config.dtype=bfloat16). The paper's best ImageNet result is 70.01% top-1;
not run here (CPU only, no ImageNet files).
"""

from configs import common


def get_config(variant: str = ""):
    config = common.base(dataset="imagenet2012", model="sew_resnet34", timesteps=4, batch_size=512,
                         num_epochs=100, learning_rate=0.2, weight_decay=2e-5)
    config.log_every_steps = 200
    return common.with_variant(config, variant)
