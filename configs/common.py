"""The fields every training config has, each explained, and the variants.

A config file calls ``base(...)`` with its recipe and returns it through
``with_variant`` so that ``--config configs/FILE.py:smoke`` shrinks any
recipe to a run of seconds (a couple of steps, tiny batches, T <= 2). A config
of a sequence dataset (cifar10_dvs) sets T back to its frame count afterwards.
"""

from __future__ import annotations

import ml_collections


def neuron_config() -> ml_collections.ConfigDict:
    """LIF settings (SPEC §1); the reference's defaults."""
    return ml_collections.ConfigDict(dict(
        decay=0.2,            # membrane decay λ (the reference stores logit(λ))
        threshold=1.0,        # firing threshold ϑ
        reset="soft",         # "soft" (v − ϑ) or "hard" (v = 0)
        detach_reset=True,    # the spike in the reset term carries no gradient
        surrogate="sigmoid",  # sigmoid | arctan | piecewise_quadratic | fast_sigmoid
        alpha=4.0,            # surrogate sharpness
    ))


def base(*, dataset: str, model: str, timesteps: int, batch_size: int, num_epochs: int, learning_rate: float,
         weight_decay: float, method: str = "rate_m") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.dataset = dataset            # a name of ratebp_jax.data.DATASETS: digits, cifar10, cifar10_dvs, shd, ...
    config.data_dir = ""                # TFDS data dir ("" = TFDS's default, ~/tensorflow_datasets)
    config.manual_dir = ""              # where manually downloaded files are (imagenet2012, cifar10_dvs, shd)
    config.augment = True               # training-set augmentation of the recipe (SPEC §6)
    config.model = model                # a name of ratebp_jax.models.names(): the zoo's NAMES or a registered one
    config.model_module = ""            # module imported before the model is created, which registers config.model
                                        # (models.register; importable from the working directory or PYTHONPATH)
    config.model_kwargs = ml_collections.ConfigDict()  # keyword arguments of the model's builder (widths, depths);
                                        # keys are added in a config file, --config.model_kwargs.KEY=V then overrides
    config.method = method              # bptt_m | bptt_s | rate_m | rate_s | sltt | sltt_k | ottt | bptt_remat
    config.sltt_k = ml_collections.FieldReference(None, field_type=int)  # K of sltt_k: steps that backpropagate
    config.timesteps = timesteps        # T, simulation steps per example
    config.dtype = "float32"            # compute dtype: float32 | bfloat16 | float64
    config.batch_size = batch_size      # global training batch, split over all devices
    config.eval_batch_size = batch_size  # global evaluation batch
    config.num_epochs = num_epochs      # length of the cosine schedule and of the run
    config.max_steps = 0                # stop after this many steps (0 = no cap; for smoke runs)
    config.max_eval_steps = 0           # evaluate on this many batches only (0 = the whole test split)
    config.seed = 0                     # parameter init, data order and augmentation
    config.optimizer = ml_collections.ConfigDict(dict(
        name="sgd",                     # sgd | adam
        learning_rate=learning_rate,    # peak learning rate, cosine-annealed to 0 per epoch
        momentum=0.9,                   # SGD momentum (PyTorch semantics, no dampening); Adam's β1
        weight_decay=weight_decay,      # L2 on conv/linear kernels only
    ))
    config.neuron = neuron_config()
    config.checkpoint_every_epochs = 1  # also saved at the end and at a step cap
    config.log_every_steps = 50         # progress line and TensorBoard scalars
    return config


def with_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """"" (the recipe) or "smoke" (seconds: 2 steps, batch 8, T <= 2, 2 eval batches).

    T <= 2 suits static images only; a config whose dataset is a sequence
    restores its frame count after this call (see cifar10_dvs_vggsnn.py).
    """
    if variant == "":
        return config
    if variant != "smoke":
        raise ValueError(f"config variant must be '' or 'smoke', got {variant!r}")
    config.num_epochs, config.max_steps, config.max_eval_steps = 1, 2, 2
    config.batch_size = config.eval_batch_size = 8
    config.timesteps = min(config.timesteps, 2)
    config.log_every_steps = 1
    return config


def digits_in_time(dataset: str, variant: str = "") -> ml_collections.ConfigDict:
    """The recipe of the temporal digits tasks, digits_rows and digits_latency (their config files
    say why): the mlp, 128-128, Adam 1e-3, 40 epochs, LIF decay 0.8, T = 8 fixed by the data."""
    steps = 8  # ratebp_jax.data.SEQUENCE_LENGTHS of both
    config = base(dataset=dataset, model="mlp", timesteps=steps, batch_size=64, num_epochs=40, learning_rate=1e-3,
                  weight_decay=0.0)
    config.optimizer.name = "adam"  # as configs/digits.py: cancels the rate methods' 1/T gradient scale
    config.augment = False  # the datasets have no augmentation (they ignore the flag)
    config.model_kwargs.widths = (128, 128)
    config.model_kwargs.batch_norm = True  # --config.model_kwargs.batch_norm=False: the table without BatchNorm
    config.neuron.decay = 0.8  # remember across steps
    config.log_every_steps = 100
    config = with_variant(config, variant)
    config.timesteps = steps  # fixed by the data: the smoke variant must not shrink T
    return config
