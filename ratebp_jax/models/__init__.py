"""The model zoo: one Flax definition per architecture, run in every mode.

    model = create("resnet18", num_classes=10)
    variables = init(model, jax.random.key(0), images, timesteps=4)
    logits = model.apply(variables, x, mode="eval")   # x: [T, B, H, W, C] -> [T, B, classes]

A model of one's own: register(name, builder, input_shape=...) (README,
"Your own model"). See ratebp_jax.layers for the modes and ratebp_jax.methods
for training.
"""

from ratebp_jax.models.common import Layers
from ratebp_jax.models.reference import export_reference_weights, load_reference_weights
from ratebp_jax.models.registry import INPUT_SHAPES, NAMES, count_params, create, init, input_shape, names, register

__all__ = ["INPUT_SHAPES", "Layers", "NAMES", "count_params", "create", "export_reference_weights", "init", "input_shape",
           "load_reference_weights", "names", "register"]
