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


def get_config(variant: str = ""):
    return common.digits_in_time("digits_rows", variant)
