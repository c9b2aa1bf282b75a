"""ratebp_jax: rate-based backpropagation for deep spiking neural networks in JAX.

The functional core (SPEC §1, §3.1–3.2):
    lif_scan(x, **neuron)        spikes [T, ...], BPTT-differentiable
    lif_spike_pass(x, **neuron)  (spikes, rate, eligibility) in one scan, no gradient
    lif_rate_stats(x, **neuron)  (rate, eligibility), no gradient
    rate_grad(x, rate, elig)     value rate, derivative elig (rate methods scale the
                                 loss by 1/T: see its docstring)
    rate_moments, rate_batchnorm the rate pass's BatchNorm on recorded statistics
Models of one's own: README, "Your own model" (layers, layers.remat,
models.register). Importing the package has no side effects; ``import ratebp_jax.data``
registers the TFDS builders.
"""

from ratebp_jax.neuron import RESETS, SURROGATES, LIFParams, lif_scan, lif_step, spike_fn, surrogate_grad
from ratebp_jax.ratebp import batch_moments, lif_rate_stats, lif_spike_pass, rate_batchnorm, rate_grad, rate_moments

__all__ = [
    "RESETS", "SURROGATES", "LIFParams", "lif_scan", "lif_step", "spike_fn", "surrogate_grad",
    "batch_moments", "lif_rate_stats", "lif_spike_pass", "rate_batchnorm", "rate_grad", "rate_moments",
]
__version__ = "0.1.0"

from ratebp_jax import models  # noqa: E402
from ratebp_jax.methods import METHODS, compute_grads, evaluate  # noqa: E402

__all__ += ["models", "METHODS", "compute_grads", "evaluate"]


def __getattr__(name: str):
    """rbp.export (ratebp_jax.export, NIR) on first use: it imports the nir package, which the rest
    of the library does not need."""
    if name == "export":
        import importlib

        return importlib.import_module("ratebp_jax.export")
    raise AttributeError(f"module 'ratebp_jax' has no attribute {name!r}")
