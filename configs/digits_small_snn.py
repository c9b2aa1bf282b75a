"""The README's own model (examples/small_snn.py) on the embedded digits, with the quickstart recipe.

    python -m experiments.train --config configs/digits_small_snn.py --workdir runs/small_snn
    python -m experiments.compare --config configs/digits_small_snn.py --methods all --seeds 0,1,2 --out DIR

config.model_module is imported before the model is created (in every
process), which registers "small_snn"; config.model_kwargs go to its builder.
"""

from configs import digits


def get_config(variant: str = ""):
    config = digits.get_config(variant)
    config.model, config.model_module = "small_snn", "examples.small_snn"
    config.model_kwargs.width = 16
    return config
