"""digits_latency (SPEC §8): the embedded digits in time-to-first-spike coding, a spiking MLP.

    python -m experiments.train --config configs/digits_latency.py --workdir runs/digits_latency --config.method=bptt_m
    python -m experiments.compare --config configs/digits_latency.py --methods all --seeds 0,1,2 --out DIR

Data (ratebp_jax/data/temporal.py): the digits split (1,437 train, 360 test,
no download); pixel v = x / 16 fires exactly once, at step
round((1 − v)·7) of T = 8, [8, 8, 8, 1] of 0/1. Every input's rate is 1/8, so
the rate methods' time-mean input is the same for every digit: the
information is in spike timing only. timesteps is 8, fixed by the data (the
smoke variant keeps it). No augmentation.

Model: "mlp" (ratebp_jax/models/mlp.py), flatten → 128 → 128 → 10, Dense →
BatchNorm → LIF per hidden layer; --config.model_kwargs.batch_norm=False drops
BatchNorm (README, "Where rate coding ends", runs both).

Recipe: tuned for bptt_m only (target: at least 90% final test accuracy in
about a minute on 2 CPU cores; the README gives what it reaches); the
other methods get it unchanged. Adam 1e-3, no weight decay, 40
epochs. The LIF decay is raised from the reference's λ = 0.2 to 0.8: at 0.2
the membrane forgets within about two steps, so a neuron could compare only
spikes that arrive close together.
"""

from configs import common


def get_config(variant: str = ""):
    return common.digits_in_time("digits_latency", variant)
