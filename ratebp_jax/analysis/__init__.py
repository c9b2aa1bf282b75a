"""Measurements of an SNN and its training methods, one concern per module:

    similarity  grad_similarity: cosine of two methods' weight gradients, per layer
    firing      firing_rates: each LIF layer's firing rate at each time step
    operations  operation_counts: ACs, MACs and energy per layer at inference
                (opcount: one layer's counts and the energy per operation)
    cost        step_cost, cost_sweep: time and memory of one training step
    common      layers in network order, a measured training step

    cosines = grad_similarity(model, variables, images, labels, timesteps=4)
    rates = firing_rates(model, variables, images, timesteps=4)
    ops = operation_counts(model, variables, images, timesteps=4)
    rows = cost_sweep(measure_in_process(model, variables, images, labels),
                      timesteps=[1, 2, 4], methods=["bptt_m", "rate_m"])

images are [B, H, W, C] or [B, T, H, W, C], as everywhere (ratebp_jax.inputs);
labels int [B]. Layers are listed in network order.
"""

from ratebp_jax.analysis import opcount
from ratebp_jax.analysis.common import call_order, subtree
from ratebp_jax.analysis.cost import (StepCost, cost_sweep, forward_step_cost, measure_in_process, median_time,
                                      step_cost)
from ratebp_jax.analysis.firing import firing_rates
from ratebp_jax.analysis.operations import operation_counts
from ratebp_jax.analysis.similarity import cosine, grad_similarity

__all__ = ["opcount", "call_order", "subtree", "StepCost", "cost_sweep", "forward_step_cost", "measure_in_process",
           "median_time", "step_cost", "firing_rates", "operation_counts", "cosine", "grad_similarity"]
