"""Weights of the authors' PyTorch release <-> our Flax variables.

    state_dict = dict(np.load("resnet18.npz", allow_pickle=False))  # converted by the user; never unpickled
    variables = load_reference_weights("resnet18", state_dict)      # {"params", "batch_stats"}
    state_dict = export_reference_weights("resnet18", variables)    # the inverse

The PyTorch keys and shapes of each model are listed in
tests/data/reference_keys/NAME.txt. Array layouts, PyTorch -> Flax:

    conv weight [O, I, kh, kw]           -> kernel [kh, kw, I, O]
    linear weight [out, in]              -> kernel [in, out]
    conv/linear bias [O]                 -> bias [O]
    BatchNorm weight, bias [C]           -> params scale, bias
    running_mean, running_var [C]        -> batch_stats mean, var
    num_batches_tracked [] (int64)       -> batch_stats count [] (int32)

PyTorch flattens an NCHW feature map as C·H·W, our models flatten NHWC as
H·W·C (common.flatten), so the classifier of vggsnn_cifar and vggsnn_dvs
(in = 512·3·3) has its input axis permuted both ways.

Names: each Flax module path maps to a PyTorch module path by a few rules per
family (see ``_family``): a residual block "layer{s}_{b}" becomes
"layer{s}.{b}", a module inside it or at the top is renamed by the family's
table or keeps its name; VGG's conv{i}/bn{i} become feature.{k}/feature.{k+1},
k counted over ratebp_jax.models.vgg.FEATURES as nn.Sequential does. The
expected variables come from our own model (traced with jax.eval_shape, never
run), with num_classes and in_channels read off the classifier and stem arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ratebp_jax.models import registry
from ratebp_jax.models.vgg import FEATURES

REFERENCE_NAMES = ("resnet18", "resnet19", "vgg11", "vgg13", "vggsnn_cifar", "vggsnn_dvs",
                   "sew_resnet34", "preact_resnet34")
COLLECTIONS = ("params", "batch_stats")
# (collection, Flax leaf) -> PyTorch leaf
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var",
               ("batch_stats", "count"): "num_batches_tracked"}
_BLOCK = re.compile(r"layer(\d+)_(\d+)")
_MAX_LISTED = 10


@dataclasses.dataclass(frozen=True)
class _Family:
    """How one model's Flax module names become PyTorch module paths."""

    stem: str                # Flax name of the input conv (its kernel gives in_channels)
    head: str                # Flax name of the output linear (its kernel gives num_classes)
    top: Mapping[str, str]   # top-level module -> PyTorch path; unlisted names are kept
    block: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the same inside "layer{s}_{b}"


def _family(name: str) -> _Family:
    if name not in REFERENCE_NAMES:
        raise ValueError(f"name must be one of {REFERENCE_NAMES}, got {name!r}")
    downsample = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
    if name in ("resnet18", "resnet19"):  # resnet19's classifier is Sequential(Linear, LIF, Linear)
        classifier = {"fc1": "classifier.0", "classifier": "classifier.2"} if name == "resnet19" else {
            "classifier": "classifier.0"}
        return _Family("conv0", "classifier", {"conv0": "conv0.0", "bn0": "conv0.1"} | classifier,
                       {"shortcut_conv": "shortcut.0", "shortcut_bn": "shortcut.1"})
    if name == "sew_resnet34":  # conv -> BN -> LIF live in Sequentials called convNeuron{1,2}
        conv_neurons = {"conv1": "convNeuron1.0", "bn1": "convNeuron1.1",
                        "conv2": "convNeuron2.0", "bn2": "convNeuron2.1"}
        return _Family("conv1", "fc", conv_neurons, conv_neurons | downsample)
    if name == "preact_resnet34":
        return _Family("conv1", "fc", {}, downsample)
    return _Family("conv0", "classifier", _vgg_feature_names(name) | {"classifier": "classifier.0"})


def _vgg_feature_names(name: str) -> dict[str, str]:
    """conv{i}, bn{i} -> feature.{k}, feature.{k+1}: k indexes the reference's nn.Sequential,
    where each conv adds three modules (conv, BN, LIF) and each pool one."""
    names, index, convs = {}, 0, 0
    for item in FEATURES[name]:
        if isinstance(item, str):
            index += 1
            continue
        names[f"conv{convs}"], names[f"bn{convs}"] = f"feature.{index}", f"feature.{index + 1}"
        index, convs = index + 3, convs + 1
    return names


def _torch_module(family: _Family, modules: tuple[str, ...]) -> str:
    """PyTorch module path of a Flax module path, e.g. ("layer2_0", "shortcut_bn") -> "layer2.0.shortcut.1"."""
    block = _BLOCK.fullmatch(modules[0])
    if block and len(modules) == 2:
        return f"layer{block[1]}.{block[2]}.{family.block.get(modules[1], modules[1])}"
    if len(modules) == 1:
        return family.top.get(modules[0], modules[0])
    raise ValueError(f"no PyTorch name for the Flax module {'/'.join(modules)}")


def _flattened_map(name: str, in_features: int) -> tuple[int, int, int] | None:
    """(H, W, C) of the feature map flattened into the classifier (vggsnn_*), else None."""
    if name not in FEATURES or FEATURES[name][-1] == "AA":  # global pool: [..., C], nothing to permute
        return None
    channels = [item for item in FEATURES[name] if not isinstance(item, str)][-1]
    side = math.isqrt(in_features // channels)
    return side, side, channels


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One array: its PyTorch key, its place and shape in the Flax variables, and its layout."""

    torch_key: str
    flax_key: tuple[str, ...]     # (collection, *module path, leaf)
    flax_shape: tuple[int, ...]
    flax_dtype: Any
    feature_map: tuple[int, int, int] | None = None  # (H, W, C) if a linear reads a flattened map

    @property
    def is_kernel(self) -> bool:
        return self.flax_key[-1] == "kernel"

    @property
    def torch_shape(self) -> tuple[int, ...]:
        shape = self.flax_shape
        if self.is_kernel and len(shape) == 4:  # [kh, kw, I, O] -> [O, I, kh, kw]
            return (shape[3], shape[2], shape[0], shape[1])
        return shape[::-1] if self.is_kernel else shape

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        if self.flax_key[-1] == "count":
            return array.astype(np.int64)
        if not self.is_kernel:
            return array
        if array.ndim == 4:
            return array.transpose(3, 2, 0, 1)
        if self.feature_map is None:
            return array.T
        h, w, c = self.feature_map  # [H·W·C, out] -> [out, C·H·W]
        return array.T.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(-1, c * h * w)

    def to_flax(self, array: np.ndarray) -> np.ndarray:
        if self.flax_key[-1] == "count":
            return array.astype(self.flax_dtype)
        if not self.is_kernel:
            return array
        if array.ndim == 4:
            return array.transpose(2, 3, 1, 0)
        if self.feature_map is None:
            return array.T
        h, w, c = self.feature_map  # [out, C·H·W] -> [H·W·C, out]
        return array.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, h * w * c).T


@functools.lru_cache(maxsize=16)
def _entries(name: str, num_classes: int, in_channels: int) -> tuple[_Entry, ...]:
    """Every array of our model ``name``, traced with jax.eval_shape (nothing is computed)."""
    family = _family(name)
    model = registry.create(name, num_classes=num_classes, in_channels=in_channels)
    height, width, _ = registry.INPUT_SHAPES[name]
    images = jax.ShapeDtypeStruct((1, height, width, in_channels), jnp.float32)
    variables = jax.eval_shape(lambda x: registry.init(model, jax.random.key(0), x, timesteps=1), images)
    entries = []
    for key, leaf in traverse_util.flatten_dict({c: variables[c] for c in COLLECTIONS}).items():
        collection, *modules, leaf_name = key
        torch_key = f"{_torch_module(family, tuple(modules))}.{_LEAF_NAMES[collection, leaf_name]}"
        feature_map = None
        if leaf_name == "kernel" and modules == [family.head]:
            feature_map = _flattened_map(name, leaf.shape[0])
        entries.append(_Entry(torch_key, key, tuple(leaf.shape), leaf.dtype, feature_map))
    return tuple(entries)


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _check_keys(what: str, expected: set[str], given: set[str]) -> None:
    """ValueError listing missing and unexpected keys (at most _MAX_LISTED of each, with counts)."""
    missing, unexpected = expected - given, given - expected
    problems = [f"{len(keys)} {kind} key(s): {_listed(keys)}"
                for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))


def _check_shapes(what: str, pairs) -> None:
    """ValueError naming every key whose shape is not the expected one; pairs: (key, expected, given)."""
    wrong = [f"{key}: expected shape {expected}, got {given}" for key, expected, given in pairs
             if tuple(expected) != tuple(given)]
    if wrong:
        more = f"; ... ({len(wrong) - _MAX_LISTED} more)" if len(wrong) > _MAX_LISTED else ""
        raise ValueError(f"{what}: {len(wrong)} array(s) of the wrong shape: " + "; ".join(wrong[:_MAX_LISTED])
                         + more)


def _size(arrays: Mapping[Any, Any], key: Any, axis: int, default: int) -> int:
    """arrays[key].shape[axis], or ``default`` if absent (the key check then reports it)."""
    shape = np.shape(arrays[key]) if key in arrays else ()
    return shape[axis] if -len(shape) <= axis < len(shape) else default


def load_reference_weights(name: str, state_dict: Mapping[str, np.ndarray]) -> dict:
    """Flax variables {"params", "batch_stats"} of model ``name`` from a reference PyTorch state_dict.

    Args:
      name: one of REFERENCE_NAMES.
      state_dict: PyTorch key -> array in PyTorch layout (keys and shapes as in
        tests/data/reference_keys/NAME.txt), e.g. ``dict(np.load(f, allow_pickle=False))``.
        num_classes and in_channels follow from the classifier and stem arrays.
    Returns:
      Nested dicts of jax arrays in Flax layout; floats keep the arrays' dtype,
      counts are int32.
    Raises:
      ValueError on an unknown name, missing or unexpected keys, or a wrong shape.
    """
    family = _family(name)
    stem, head = (f"{_torch_module(family, (module,))}.weight" for module in (family.stem, family.head))
    entries = _entries(name, _size(state_dict, head, 0, 10), _size(state_dict, stem, 1, 3))
    what = f"state_dict for {name}"
    _check_keys(what, {entry.torch_key for entry in entries}, set(state_dict))
    arrays = {entry.torch_key: np.asarray(state_dict[entry.torch_key]) for entry in entries}
    _check_shapes(what, [(entry.torch_key, entry.torch_shape, arrays[entry.torch_key].shape) for entry in entries])
    flat = {entry.flax_key: jnp.asarray(entry.to_flax(arrays[entry.torch_key])) for entry in entries}
    return traverse_util.unflatten_dict(flat)


def export_reference_weights(name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The reference PyTorch state_dict (key -> NumPy array, PyTorch layout) of our variables.

    The inverse of load_reference_weights. ``variables`` holds "params" and
    optionally "batch_stats" (other collections are ignored); with "params"
    alone (e.g. ``{"params": grads}``) only the parameter keys are returned,
    without running statistics or num_batches_tracked. Floats keep their
    dtype; num_batches_tracked is int64, as in PyTorch.
    """
    family = _family(name)
    if "params" not in variables:
        raise ValueError(f"variables must hold 'params', got collections {sorted(variables)}")
    collections = [c for c in COLLECTIONS if c in variables]
    flat = traverse_util.flatten_dict({c: variables[c] for c in collections})
    num_classes = _size(flat, ("params", family.head, "kernel"), -1, 10)
    in_channels = _size(flat, ("params", family.stem, "kernel"), -2, 3)
    entries = [entry for entry in _entries(name, num_classes, in_channels) if entry.flax_key[0] in collections]
    what = f"variables for {name}"
    _check_keys(what, {"/".join(entry.flax_key) for entry in entries}, {"/".join(key) for key in flat})
    _check_shapes(what, [("/".join(entry.flax_key), entry.flax_shape, np.shape(flat[entry.flax_key]))
                         for entry in entries])
    return {entry.torch_key: np.asarray(entry.to_torch(np.asarray(flat[entry.flax_key])), order="C")
            for entry in entries}
