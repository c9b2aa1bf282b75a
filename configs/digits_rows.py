"""digits_rows (SPEC §8): the embedded digits presented row by row, a spiking MLP.

    python -m experiments.train --config configs/digits_rows.py --workdir runs/digits_rows --config.method=bptt_m
    python -m experiments.compare --config configs/digits_rows.py --methods all --seeds 0,1,2 --out DIR

Data (ratebp_jax/data/temporal.py): the digits split (1,437 train, 360 test,
no download); step t = 1..8 gives image row t only, [8, 1, 8, 1], so
timesteps is 8, fixed by the data (the smoke variant keeps it). No
augmentation: a shift would move rows in time.

Model: "mlp" (ratebp_jax/models/mlp.py), flatten → 128 → 128 → 10, Dense →
BatchNorm → LIF per hidden layer; --config.model_kwargs.batch_norm=False drops
BatchNorm (README, "Where rate coding ends", runs both).

Recipe: tuned for bptt_m only (target: at least 80% final test accuracy in
about a minute on 2 CPU cores; the README gives what it reaches); the
other methods get it unchanged. Adam 1e-3, no weight decay, 40
epochs. The LIF decay is raised from the reference's λ = 0.2 to 0.8: at 0.2
the membrane forgets within about two steps, i.e. two rows, while a digit is
told apart by rows far apart.
"""

from configs import common

STEPS = 8  # rows per digit (ratebp_jax.data.SEQUENCE_LENGTHS["digits_rows"])


def get_config(variant: str = ""):
    config = common.base(dataset="digits_rows", model="mlp", timesteps=STEPS, batch_size=64, num_epochs=40,
                         learning_rate=1e-3, weight_decay=0.0)
    config.optimizer.name = "adam"  # as configs/digits.py: cancels the rate methods' 1/T gradient scale
    config.augment = False  # the dataset has no augmentation (it ignores the flag)
    config.model_kwargs.widths = (128, 128)
    config.model_kwargs.batch_norm = True  # --config.model_kwargs.batch_norm=False: the table without BatchNorm
    config.neuron.decay = 0.8  # remember across rows (see the docstring)
    config.log_every_steps = 100
    config = common.with_variant(config, variant)
    config.timesteps = STEPS  # fixed by the data: the smoke variant must not shrink T
    return config
