"""The digits recipe for deployment: configs/digits.py with hard reset (v = 0 after a spike).

    python -m experiments.train --config configs/digits_hard.py --workdir runs/digits_hard
    python -m experiments.export --workdir runs/digits_hard --out digits.nir

NIR's LIF (and the chips and simulators that read NIR) resets to a potential,
so a hard-reset model exports exactly (ratebp_jax.export, SPEC §7); the
paper's default soft reset does not. The same as
``--config configs/digits.py --config.neuron.reset=hard``. Accuracy: README,
"Export to NIR".
"""

from configs import digits


def get_config(variant: str = ""):
    config = digits.get_config(variant)
    config.neuron.reset = "hard"
    return config
