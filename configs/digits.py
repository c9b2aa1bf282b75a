"""The embedded default: scikit-learn's handwritten digits (8×8, 10 classes), no download.

    python -m experiments.train --config configs/digits.py --workdir runs/digits
    python -m experiments.train --config configs/digits.py --workdir runs/digits_bptt --config.method=bptt_m

Expected on 2 CPU cores: >= 98% test accuracy (360 test digits) in under
3 minutes, compilation included, for rate_m and bptt_m (README, Results).
"""

from configs import common


def get_config(variant: str = ""):
    config = common.base(dataset="digits", model="digits_vgg", timesteps=4, batch_size=64, num_epochs=15,
                         learning_rate=0.01, weight_decay=0.0)
    # Adam, not the recipes' SGD: the rate methods scale their gradient by 1/T (as the
    # reference does), which Adam's normalisation cancels, so one setting suits all methods.
    config.optimizer.name = "adam"
    config.log_every_steps = 100
    return common.with_variant(config, variant)
