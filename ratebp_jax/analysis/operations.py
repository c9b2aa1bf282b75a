"""Synaptic operations and energy per image of each conv and linear layer at inference.

    ops = operation_counts(model, variables, images, timesteps=4)
    # [{"layer": "conv0", "input_rate", "acs", "macs", "ann_macs", "energy_pj", "ann_energy_pj",
    #   "ann_macs_padding_free", "literature_ops", "literature_energy_pj"}, ...]

One layer's counts and the energy per operation: ratebp_jax.analysis.opcount.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ratebp_jax import inputs
from ratebp_jax.analysis import opcount
from ratebp_jax.analysis.common import call_order, inference_variables, subtree


@functools.partial(jax.jit, static_argnums=0, static_argnames="timesteps")
def _layer_operations(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int) -> dict:
    """{layer path: {"ops": int32 [T, B], "nonzero": int32 [T, B], "inputs", "ann_macs",
    "ann_macs_padding_free", "binary"}} of the eval pass: its operations, its nonzero inputs and inputs per
    step and example, its ANN MACs (usual; padded border left out), whether every input is 0/1. A layer
    called twice is counted twice."""
    calls, calling = [], set()

    def capture(next_fun, args, kwargs, context):
        path = "/".join(context.module.path)
        if context.method_name != "__call__" or not isinstance(context.module, opcount.KINDS) or path in calling:
            return next_fun(*args, **kwargs)  # (the last case: a pass-aware layer calling its flax __call__)
        calls.append((path, context.module.clone(parent=None), args[0]))
        calling.add(path)
        try:
            return next_fun(*args, **kwargs)
        finally:
            calling.discard(path)

    with nn.intercept_methods(capture):
        model.apply(variables, inputs.time_major(images, timesteps), mode="eval")
    counts = {}
    for path, layer, x in calls:  # after the forward pass: the counting convs are not captured
        kernel_shape = subtree(variables["params"], path)["kernel"].shape
        own = {"ops": opcount.receptive_counts(layer, kernel_shape, x),
               "nonzero": (x != 0).reshape(x.shape[:2] + (-1,)).sum(axis=-1, dtype=jnp.int32),
               "inputs": jnp.int32(x[0, 0].size), "ann_macs": jnp.int32(opcount.usual_macs(layer, kernel_shape, x)),
               "ann_macs_padding_free": opcount.dense_macs(layer, kernel_shape, x), "binary": opcount.is_binary(x)}
        before = counts.get(path)
        counts[path] = own if before is None else {
            k: before[k] & own[k] if k == "binary" else before[k] + own[k] for k in own}
    return counts


def operation_counts(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int,
                     e_ac_pj: float = opcount.E_AC_PJ, e_mac_pj: float = opcount.E_MAC_PJ) -> list[dict]:
    """Synaptic operations and energy per image of each conv and linear layer at inference.

    The evaluation forward pass (mode "eval": running BatchNorm statistics) on
    images [B, H, W, C] or [B, T, H, W, C]. One row per layer, in network
    order, all per image (summed over the T steps and the batch, divided by B):
      layer          its parameter path, e.g. "layer1_0/conv1"
      input_rate     the fraction of its inputs (over T, the batch and positions)
                     that are nonzero: the firing rate when they are spikes
      acs, macs      the spiking network's operations: at each step, for each
                     output element, one per nonzero input in its receptive
                     field (padding is no input). ACs if every input of the
                     layer in this batch is 0 or 1 (spikes, or a binary image),
                     else MACs (and acs = 0): the encoding conv on the image (a
                     static image is fed at every step, so T times), a layer
                     after an average pool (its inputs are fractions of
                     spikes), a sum of spikes (sew_resnet34's ADD gives 2s)
      ann_macs       the ANN of the same architecture, once per image, counted as
                     thop/ptflops and SNN papers do: every output element × the
                     inputs of its kernel, the padded border included
      energy_pj      acs · e_ac_pj + macs · e_mac_pj
      ann_energy_pj  ann_macs · e_mac_pj
      ann_macs_padding_free  the ANN's MACs without the padded border (a real
                     input with no zeros: what the SNN's count becomes)
      literature_ops the per-layer estimate of SNN papers: input_rate · ann_macs · T
      literature_energy_pj  literature_ops · e_ac_pj, or · e_mac_pj for a layer
                     whose inputs are not all 0/1 (as acs and macs)
    Bias additions are not counted. The default energies per operation are
    opcount.E_AC_PJ and opcount.E_MAC_PJ (a 32-bit float add and
    multiply-accumulate at 45 nm). Totals are sums over rows.
    """
    variables = inference_variables(variables)
    counts = jax.device_get(_layer_operations(model, variables, images, timesteps=timesteps))
    batch = images.shape[0]
    rows = []
    for layer in call_order(model, variables, images, timesteps=timesteps, kinds=opcount.KINDS):
        c = counts[layer]
        ops = float(np.sum(c["ops"], dtype=np.int64)) / batch
        acs, macs = (ops, 0.0) if c["binary"] else (0.0, ops)
        ann_macs = float(c["ann_macs"])
        input_rate = float(np.sum(c["nonzero"], dtype=np.int64) / (c["nonzero"].size * c["inputs"]))
        literature = opcount.literature_ops(input_rate, ann_macs, timesteps)
        rows.append({"layer": layer, "input_rate": input_rate, "acs": acs, "macs": macs, "ann_macs": ann_macs,
                     "energy_pj": opcount.energy_pj(acs, macs, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj),
                     "ann_energy_pj": opcount.energy_pj(0.0, ann_macs, e_mac_pj=e_mac_pj),
                     "ann_macs_padding_free": float(c["ann_macs_padding_free"]), "literature_ops": literature,
                     "literature_energy_pj": literature * (e_ac_pj if c["binary"] else e_mac_pj)})
    return rows
