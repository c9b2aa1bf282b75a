"""The evaluation network as a NIR graph (Neuromorphic Intermediate Representation, SPEC §7).

    graph = to_nir(model, variables, input_shape=(8, 8, 1), timesteps=4)
    nir.write("digits.nir", graph)

One mechanism for every model: the evaluation forward pass is traced to a
jaxpr (jax.make_jaxpr) while nn.intercept_methods replaces each call of a
Conv, Dense, BatchNorm or LIF layer by one opaque equation; the layers become
NIR nodes, and the functional operations between them are mapped primitive by
primitive:

    Conv (+ BatchNorm)          nir.Conv2d, BatchNorm with running statistics folded in:
                                W' = W·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β per output channel
    Dense (+ BatchNorm)         nir.Affine (on a feature map: a 1×1 nir.Conv2d)
    BatchNorm alone             a 1×1 nir.Conv2d (on a feature map) or nir.Affine, diagonal weights
    LIF                         nir.LIF: v_leak = 0, v_threshold = ϑ, τ = dt/(1 − λ), R = τ/dt, so
                                that the Euler step of τ v̇ = −v + R·I is u = λ·v + x
    x + y                       edges from both into the next node (NIR sums a node's inputs)
    reduce_window_sum / k·k     nir.AvgPool2d (without the division: nir.SumPool2d)
    mean over H, W              nir.AvgPool2d over the whole map, then nir.Flatten to [C]
    reshape to [..., N]         nir.Flatten; the next Dense's input order is permuted
    other linear operations     (slices, stacks, ... e.g. PyTorch's adaptive pooling) an average pool if
                                they compute one (probed), else folded into the Dense that reads them

NIR's tensors are channels first without a batch axis ([C, H, W]); ours are
[..., H, W, C]. Every value carries the position of each of its elements in
NIR's flattened layout, so a Dense after a flatten gets the kernel rows that
read NIR's C·H·W order. A graph computes one time step: the image (normalised
as in training; the normalisation is not in the graph) is presented at every
one of the T steps (direct coding), and the prediction is the mean over the T
steps of the output node. Anything else between the layers (max-pooling,
constants added, reductions over channels, ...) stops the export with one
error naming the operation and the layer it follows.

Resets: NIR 1.0's LIF resets to v_reset (hard reset, v = 0 here), which is a
hard-reset model's reset. A soft-reset model (subtract ϑ, the paper's default)
exports only with reset="soft": the graph then records the subtractive reset
in every LIF node's metadata ("reset": "subtract"), which NIR readers ignore.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import nir
import numpy as np
from jax.extend import core as jex

from ratebp_jax import layers

DEFAULT_DT = 1e-3  # seconds per time step of the exported graph (τ and R follow from it)
_LEAD = (2, 3)     # the (T, B) the forward pass is traced with: distinct, so mixing them is caught
_RESET_NAMES = {"hard": "zero", "soft": "subtract"}
_PASS_THROUGH = ("convert_element_type", "copy", "copy_p", "optimization_barrier")


class ExportError(ValueError):
    """The model (or one of its layers) has no exact NIR graph; the message names the layer."""


_layer_p = jex.Primitive("ratebp_layer")  # one recorded layer call: x -> y (never evaluated)
_layer_p.def_abstract_eval(lambda x, *, index, shape: jax.core.ShapedArray(shape, x.dtype))


class _Call(NamedTuple):
    """One recorded layer call: the module, its path and its variables (NumPy)."""

    module: nn.Module
    name: str
    variables: dict


@dataclasses.dataclass(frozen=True)
class _Value:
    """A tensor between layers: the sum of the outputs of the NIR nodes ``terms`` (the edges).

    shape: NIR's shape (channels first, no batch axis); order: our per-sample
    array ([H, W, C] or [N]) holding each element's index in NIR's flattened layout.
    """

    terms: tuple[str, ...]
    shape: tuple[int, ...]
    order: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Pool:
    """A pooling sum not yet materialised: its scale comes from a later div/mul."""

    value: _Value
    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_shape: tuple[int, ...]   # ours, per sample
    flatten: bool                # a global mean: [H, W, C] -> [C]
    after: str                   # name for errors: the node(s) it pools
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Linear:
    """Other operations between layers, kept as a function of one _Value until a node reads them:
    fn maps the source in our layout, [*_LEAD, *source per-sample shape], to this tensor. Read by
    a Dense they fold into its nir.Affine (e.g. an adaptive pool before a classifier); read by
    anything else they must equal an average pool (found by probing fn)."""

    source: _Value
    fn: Any
    ops: tuple[str, ...]
    out_shape: tuple[int, ...]   # ours, per sample

    def offset_and_matrix(self, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fn(0)·K [out], the matrix of s -> fn(s)·K on NIR's flattened source [out, M])."""
        order = self.source.order
        size = int(np.prod(self.source.shape))
        dtype = jnp.result_type(kernel.dtype, jnp.float32)

        def h(s):  # NIR's flat source -> our Dense input [N] -> times kernel
            x = jnp.broadcast_to(s[order], _LEAD + order.shape)
            return self.fn(x)[(0,) * len(_LEAD)].reshape(-1) @ jnp.asarray(kernel, dtype)

        zero = jnp.zeros(size, dtype)
        return np.asarray(h(zero)), np.asarray(jax.jacrev(h)(zero))


def _map_order(h: int, w: int, c: int) -> np.ndarray:
    """[H, W, C] -> index of each element in NIR's flattened [C, H, W]."""
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0)


def _is_map(value: _Value) -> bool:
    return (len(value.shape) == 3 and value.order.ndim == 3
            and np.array_equal(value.order, _map_order(*value.order.shape)))


def _path(module: nn.Module) -> str:
    return ".".join(module.path) or type(module).__name__


def _numpy(tree) -> dict:
    return jax.tree.map(np.asarray, dict(tree))


def _pairs(spec, n: int) -> tuple:
    return (spec,) * n if isinstance(spec, int) else tuple(spec)


def _ungrouped(kernel: np.ndarray, groups: int) -> np.ndarray:
    """NIR's [C_out, C_in, kH, kW] weight of our [kH, kW, C_in/groups, C_out] kernel, zero between groups
    (NIR 1.0.8 types a grouped conv's input with C_in/groups channels, so groups stay 1)."""
    weight = kernel.transpose(3, 2, 0, 1)
    if groups == 1:
        return weight
    c_out, c_in = weight.shape[0], weight.shape[1] * groups
    full = np.zeros((c_out, c_in) + weight.shape[2:], weight.dtype)
    per_out, per_in = c_out // groups, c_in // groups
    for g in range(groups):
        full[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = weight[g * per_out:(g + 1) * per_out]
    return full


def _conv_geometry(module: nn.Conv, name: str, in_hw: Sequence[int]):
    """(strides, symmetric padding, dilation) of the 2-D flax conv ``name``, or ExportError naming it."""
    kernel = tuple(module.kernel_size)
    if len(kernel) != 2:
        raise ExportError(f"layer {name}: only 2-D convolutions have a NIR node (kernel {kernel})")
    strides = _pairs(module.strides or 1, 2)
    dilation = _pairs(module.kernel_dilation or 1, 2)
    if module.input_dilation not in (None, 1, (1, 1)):
        raise ExportError(f"layer {name}: input dilation has no NIR node")
    padding = module.padding
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ExportError(f"layer {name}: {padding} padding has no NIR node")
        window = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
        padding = jax.lax.padtype_to_pads(tuple(in_hw), window, strides, padding.upper())
    pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in _pairs(padding, 2)]
    if any(lo != hi for lo, hi in pairs):
        raise ExportError(f"layer {name}: asymmetric padding {pairs} has no NIR node")
    return strides, tuple(lo for lo, _ in pairs), dilation


def _out_shape(module: nn.Module, name: str, kernel, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The layer's output shape for input ``shape`` (leading axes included)."""
    if isinstance(module, (layers.LIF, layers.BatchNorm)):
        return shape
    if isinstance(module, nn.Dense):
        return shape[:-1] + (module.features,)
    if len(shape) != len(_LEAD) + 3:
        raise ExportError(f"layer {name}: a conv needs [..., H, W, C] input, got per-sample shape "
                          f"{shape[len(_LEAD):]}")
    strides, padding, dilation = _conv_geometry(module, name, shape[-3:-1])
    out = jax.eval_shape(lambda x, k: jax.lax.conv_general_dilated(
        x, k, strides, [(p, p) for p in padding], rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=module.feature_group_count),
        jax.ShapeDtypeStruct((math.prod(shape[:-3]),) + shape[-3:], jnp.float32),
        jax.ShapeDtypeStruct(kernel.shape, jnp.float32))
    return shape[:-3] + out.shape[1:]


def _trace(model: nn.Module, variables: dict, input_shape: tuple[int, ...], dtype) -> tuple[Any, list]:
    """The eval forward pass as a closed jaxpr whose layer calls are _layer_p equations
    (index: position in the returned list of modules)."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.BatchNorm):
            raise ExportError(f"layer {_path(module)}: flax's nn.BatchNorm; use ratebp_jax.layers.BatchNorm")
        if context.method_name != "__call__" or not isinstance(
                module, (nn.Conv, nn.Dense, layers.BatchNorm, layers.LIF)):
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["x"]
        call = _Call(module, _path(module), _numpy(module.variables))
        calls.append(call)
        kernel = call.variables["params"].get("kernel") if "params" in call.variables else None
        return _layer_p.bind(x, index=len(calls) - 1, shape=_out_shape(module, call.name, kernel, x.shape))

    def forward(x):
        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, mode="eval")

    x = jax.ShapeDtypeStruct(_LEAD + tuple(input_shape), dtype)
    return jax.make_jaxpr(forward)(x), calls


class _Builder:
    """Walks the jaxpr once, adding NIR nodes and edges (SPEC §7)."""

    def __init__(self, calls: list, uses: dict, neuron_reset: str | None, dt: float):
        self.calls, self.uses, self.reset, self.dt = calls, uses, neuron_reset, dt
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.foldable: dict[Any, str] = {}  # jaxpr var -> the Conv/Affine node that alone produced it
        self.resets: set[str] = set()

    def add(self, name: str, node: nir.NIRNode, inputs: Sequence[str]) -> str:
        base, i = name, 1
        while name in self.nodes:
            name, i = f"{base}_{i}", i + 1
        self.nodes[name] = node
        for src in inputs:
            if (src, name) in self.edges:
                raise ExportError(f"{src} enters {name} twice (x + x): NIR edges cannot scale")
            self.edges.append((src, name))
        return name

    # -- layers -------------------------------------------------------------------------------
    def layer(self, call: _Call, value: _Value, out_shape: tuple[int, ...], invar, outvar) -> _Value:
        module, name, v = call
        if not isinstance(module, nn.Dense):
            value = self.materialise(value)
        if isinstance(module, layers.LIF):
            return self.lif(module, name, value)
        if isinstance(module, layers.BatchNorm):
            return self.batchnorm(module, name, v, value, invar)
        kernel = v["params"]["kernel"]
        bias = v["params"].get("bias", np.zeros(kernel.shape[-1], kernel.dtype))
        if isinstance(value, _Linear) and not isinstance(module, nn.Conv) and len(value.out_shape) == 1:
            offset, weight = value.offset_and_matrix(kernel)  # the operations folded into the affine
            source = self.flat(value.source)
            node = nir.Affine(weight=weight.astype(kernel.dtype), bias=(bias + offset).astype(kernel.dtype),
                              metadata={"folded": " ".join(value.ops)})
            node_name = self.add(name, node, source.terms)
            if self.uses.get(outvar, 0) == 1:
                self.foldable[outvar] = node_name
            return self.output_value(node_name, out_shape)
        value = self.materialise(value)
        if isinstance(module, nn.Conv):
            if not _is_map(value):
                raise ExportError(f"layer {name}: a conv needs a feature map, got NIR shape {value.shape}")
            strides, padding, dilation = _conv_geometry(module, name, value.order.shape[:2])
            node = nir.Conv2d(input_shape=tuple(value.shape[1:]), weight=_ungrouped(kernel, module.feature_group_count),
                              stride=strides, padding=padding, dilation=dilation, groups=1, bias=bias)
        elif _is_map(value):  # Dense on [..., H, W, C]: a 1×1 conv
            node = nir.Conv2d(input_shape=tuple(value.shape[1:]), weight=kernel.T[:, :, None, None],
                              stride=1, padding=0, dilation=1, groups=1, bias=bias)
        elif value.order.ndim == 1:
            weight = np.empty(kernel.shape[::-1], kernel.dtype)
            weight[:, value.order] = kernel.T  # our input element i is NIR's element order[i]
            node = nir.Affine(weight=weight, bias=bias)
        else:
            raise ExportError(f"layer {name}: a Dense on per-sample shape {value.order.shape} has no NIR node")
        node_name = self.add(name, node, value.terms)
        if self.uses.get(outvar, 0) == 1:
            self.foldable[outvar] = node_name
        return self.output_value(node_name, out_shape)

    def flat(self, value: _Value) -> _Value:
        """value as NIR's flat vector (a nir.Flatten node if it is not one already)."""
        if len(value.shape) == 1:
            return value
        name = self.add("flatten", nir.Flatten(input_type={"input": np.array(value.shape)}, start_dim=0),
                        value.terms)
        return _Value((name,), (int(np.prod(value.shape)),), value.order.reshape(-1))

    def output_value(self, node_name: str, out_shape: tuple[int, ...]) -> _Value:
        if len(out_shape) == 3:
            return _Value((node_name,), (out_shape[2], out_shape[0], out_shape[1]), _map_order(*out_shape))
        if len(out_shape) == 1:
            return _Value((node_name,), out_shape, np.arange(out_shape[0]))
        raise ExportError(f"layer {node_name}: per-sample output shape {out_shape} has no NIR layout")

    def batchnorm(self, module, name, v, value: _Value, invar) -> _Value:
        stats, params = v["batch_stats"], v["params"]
        scale = params["scale"] / np.sqrt(stats["var"] + module.epsilon)
        shift = params["bias"] - stats["mean"] * scale
        target = self.foldable.pop(invar, None)
        if target is not None:  # fold into the Conv/Affine that alone feeds it
            node = self.nodes[target]
            dtype = node.weight.dtype
            weight = node.weight * scale.reshape((-1,) + (1,) * (node.weight.ndim - 1))
            node.weight = weight.astype(dtype)
            node.bias = (node.bias * scale + shift).astype(dtype)
            node.metadata = {"batchnorm": name}
            return value
        dtype = params["scale"].dtype
        if _is_map(value):  # a 1×1 conv with a diagonal kernel: y_c = scale_c · x_c + shift_c
            # (not depthwise, groups = C: NIR 1.0.8 types a conv's input with C_in/groups channels)
            weight = np.diag(scale).astype(dtype)[:, :, None, None]
            node = nir.Conv2d(input_shape=tuple(value.shape[1:]), weight=weight, stride=1, padding=0, dilation=1,
                              groups=1, bias=shift.astype(dtype))
            return self.output_value(self.add(name, node, value.terms), value.order.shape)
        if value.order.ndim == 1:
            weight = np.zeros((value.shape[0],) * 2, dtype)
            weight[value.order, value.order] = scale
            bias = np.zeros(value.shape[0], dtype)
            bias[value.order] = shift
            return dataclasses.replace(value, terms=(self.add(name, nir.Affine(weight=weight, bias=bias),
                                                              value.terms),))
        raise ExportError(f"layer {name}: a BatchNorm on per-sample shape {value.order.shape} has no NIR node")

    def lif(self, module: layers.LIF, name: str, value: _Value) -> _Value:
        neuron = module.neuron
        if self.reset != "soft" and neuron.reset != "hard":
            raise ExportError(
                f"layer {name}: {neuron.reset} reset (v - threshold after a spike) is not NIR's LIF, which resets "
                f"to v_reset; train with --config.neuron.reset=hard to export exactly, or pass reset='soft' to "
                f"record the subtractive reset in the nodes' metadata (which NIR readers ignore)")
        self.resets.add(neuron.reset)
        full = lambda x: np.full(value.shape, x, np.float64)
        tau = self.dt / (1 - neuron.decay)
        node = nir.LIF(tau=full(tau), r=full(tau / self.dt), v_leak=full(0.0), v_threshold=full(neuron.threshold),
                       v_reset=full(0.0), metadata={"reset": _RESET_NAMES[neuron.reset], "decay": neuron.decay,
                                                    "dt": self.dt})
        return dataclasses.replace(value, terms=(self.add(name, node, value.terms),))

    # -- pooling ------------------------------------------------------------------------------
    def materialise(self, x) -> _Value:
        if isinstance(x, _Value):
            return x
        if isinstance(x, _Linear):
            return self.materialise(_as_pool(x))
        if not isinstance(x, _Pool):
            raise ExportError(f"a constant {np.shape(x)} enters the network between layers; NIR has no node for it")
        area = x.window[0] * x.window[1]
        if abs(x.scale * area - 1) < 1e-6:
            kind, node = "avg_pool", nir.AvgPool2d(kernel_size=np.array(x.window), stride=np.array(x.stride),
                                                   padding=np.array(x.padding))
        elif abs(x.scale - 1) < 1e-6:
            kind, node = "sum_pool", nir.SumPool2d(kernel_size=np.array(x.window), stride=np.array(x.stride),
                                                   padding=np.array(x.padding))
        else:
            raise ExportError(f"pooling after {x.after} scaled by {x.scale} (not 1 or 1/{area}) has no NIR node")
        name = self.add(kind, node, x.value.terms)
        c, h, w = x.value.shape
        out_h, out_w = ((n + 2 * p - k) // s + 1 for n, p, k, s in zip((h, w), x.padding, x.window, x.stride))
        pooled = _Value((name,), (c, out_h, out_w), _map_order(out_h, out_w, c))
        if not x.flatten:
            return pooled
        flat = self.add("flatten", nir.Flatten(input_type={"input": np.array(pooled.shape)}, start_dim=0),
                        (name,))
        return _Value((flat,), (c,), np.arange(c))


_TENSORS = (_Value, _Pool, _Linear)
# primitives that are linear in their tensor input(s) (mul/dot_general: with a constant)
_LINEAR = ("slice", "reduce_sum", "div", "mul", "neg", "sub", "add", "add_any", "broadcast_in_dim", "reshape",
           "concatenate", "stack", "transpose", "squeeze", "expand_dims", "pad", "dot_general", "rev",
           "reduce_window_sum", "dynamic_slice", "gather", "select_n") + _PASS_THROUGH


def _compose(primitive, params: dict, ins: list, out_shape: tuple[int, ...], builder) -> _Linear:
    """The primitive applied after the linear region(s) among ins (one source), as a _Linear."""
    regions = []
    for v in ins:
        if isinstance(v, _Pool):
            v = builder.materialise(v)
        if isinstance(v, _Value):
            v = _Linear(v, lambda x: x, (), tuple(v.order.shape))
        regions.append(v)
    linear = [v for v in regions if isinstance(v, _Linear)]
    source = linear[0].source
    if any(v.source.terms != source.terms or v.source.shape != source.shape for v in linear):
        raise ExportError(f"the operation {primitive.name} mixes the outputs of {_names(linear[0])} and of "
                          f"{_names(linear[-1])}; NIR has no node for it")
    def fn(x, regions=tuple(regions)):
        return primitive.bind(*[r.fn(x) if isinstance(r, _Linear) else r for r in regions], **params)

    prim = primitive.name
    ops = sum((v.ops for v in linear), ()) + (prim,)
    return _Linear(source, fn, ops, out_shape)


def _as_pool(x: _Linear) -> _Pool:
    """The average (or global average) pool that x computes, found by probing, or ExportError."""
    source = x.source
    if not _is_map(source):
        raise ExportError(f"the operations {' '.join(x.ops)} after {_names(x)} have no NIR node")
    h, w, c = source.order.shape
    probe = np.random.default_rng(0).normal(size=_LEAD + (h, w, c))
    expected = np.asarray(x.fn(jnp.asarray(probe, jnp.float32)), np.float64)

    def pooled(window, stride):
        out = jax.lax.reduce_window(jnp.asarray(probe, jnp.float32), 0.0, jax.lax.add,
                                    (1,) * len(_LEAD) + window + (1,), (1,) * len(_LEAD) + stride + (1,), "VALID")
        return np.asarray(out, np.float64) / (window[0] * window[1])

    if x.out_shape == (c,):
        candidates = [((h, w), (h, w), True)]
    elif len(x.out_shape) == 3 and x.out_shape[2] == c:
        (oh, ow), candidates = x.out_shape[:2], []
        for sh in range(1, h + 1):
            for sw in range(1, w + 1):
                kh, kw = h - (oh - 1) * sh, w - (ow - 1) * sw
                if kh >= 1 and kw >= 1:
                    candidates.append(((kh, kw), (sh, sw), False))
    else:
        candidates = []
    for window, stride, flatten in candidates:
        y = pooled(window, stride).reshape(expected.shape)
        if np.allclose(y, expected, rtol=1e-5, atol=1e-6):
            return _Pool(source, window, stride, (0, 0), x.out_shape, flatten, _names(x), 1 / (window[0] * window[1]))
    raise ExportError(f"the operations {' '.join(x.ops)} after {_names(x)} are not an average pool, and only "
                      f"a Dense can absorb them; NIR has no node for them")


def _scalar(x) -> float | None:
    if isinstance(x, _TENSORS) or np.size(x) != 1:
        return None
    return float(np.asarray(x).reshape(()))


def _names(value) -> str:
    value = value.value if isinstance(value, _Pool) else value.source if isinstance(value, _Linear) else value
    return ", ".join(value.terms) if isinstance(value, _Value) else "a constant"


def _interpret(closed: Any, args: list, builder: _Builder) -> list:
    """Runs the (closed) jaxpr on _Value/_Pool/constant arguments, adding nodes to ``builder``."""
    jaxpr = closed.jaxpr if isinstance(closed, jex.ClosedJaxpr) else closed
    consts = [np.asarray(c) for c in closed.consts] if isinstance(closed, jex.ClosedJaxpr) else []
    env = dict(zip(jaxpr.constvars, consts))

    def read(var):
        return var.val if isinstance(var, jex.Literal) else env[var]

    for var, arg in zip(jaxpr.invars, args, strict=True):
        env[var] = arg
    for eqn in jaxpr.eqns:
        prim, params = eqn.primitive.name, eqn.params
        ins = [read(v) for v in eqn.invars]
        out_shape = tuple(eqn.outvars[0].aval.shape[len(_LEAD):]) if eqn.outvars else ()
        sub = [p for p in params.values() if isinstance(p, (jex.ClosedJaxpr, jex.Jaxpr))]
        if prim == "ratebp_layer":
            call = builder.calls[params["index"]]
            if not isinstance(ins[0], _TENSORS):
                raise ExportError(f"layer {call.name} reads a constant, not the network's input")
            x = ins[0] if isinstance(ins[0], _Linear) else builder.materialise(ins[0])
            out = builder.layer(call, x, out_shape, eqn.invars[0], eqn.outvars[0])
        elif all(not isinstance(x, _TENSORS) for x in ins):  # constants only (e.g. a shape computation)
            out = eqn.primitive.bind(*ins, **params)
            out = [np.asarray(o) for o in out] if eqn.primitive.multiple_results else np.asarray(out)
        elif len(sub) == 1 and prim not in ("scan", "while", "cond"):  # jit, custom_jvp_call, ...: inline it
            outs = _interpret(sub[0], ins, builder)
            for var, val in zip(eqn.outvars, outs):
                env[var] = val
            continue
        else:
            out = _functional(eqn.primitive, params, ins, out_shape, builder)
        if eqn.primitive.multiple_results:
            for var, val in zip(eqn.outvars, out):
                env[var] = val
        else:
            env[eqn.outvars[0]] = out
    return [read(v) for v in jaxpr.outvars]


def _functional(primitive, params: dict, ins: list, out_shape: tuple[int, ...], builder: _Builder):
    """One primitive between layers on a _Value/_Pool/_Linear (SPEC §7's mapping), or ExportError."""
    prim = primitive.name
    x = next(v for v in ins if isinstance(v, _TENSORS))
    lead = len(_LEAD)
    if prim in _PASS_THROUGH:
        return x
    if prim == "div" and isinstance(ins[1], _TENSORS):
        raise ExportError(f"a division by the output of {_names(ins[1])} has no NIR node")
    if prim in ("add", "add_any", "sub") and any(isinstance(v, _Linear) for v in ins) and all(
            isinstance(v, _TENSORS) for v in ins) and len({_names(v) for v in ins}) > 1:
        ins = [builder.materialise(v) for v in ins]  # regions of two sources: pools, then edges
        if prim == "sub":
            raise ExportError(f"the difference of {_names(ins[0])} and {_names(ins[1])} has no NIR node")
    if prim == "reshape" and isinstance(x, _Linear) and len(params["new_sizes"]) == lead + 1:
        try:  # a pool before a flatten: keep it a pool node
            return _functional(primitive, params, [builder.materialise(x)], out_shape, builder)
        except ExportError:
            pass
    if any(isinstance(v, _Linear) for v in ins):
        if prim in _LINEAR:
            return _compose(primitive, params, ins, out_shape, builder)
        x = next(v for v in ins if isinstance(v, _Linear))
        raise ExportError(f"the operation {prim} after {_names(x)} has no NIR node")
    if prim in ("add", "add_any") and all(isinstance(v, _TENSORS) for v in ins):
        a, b = (builder.materialise(v) for v in ins)
        if a.shape != b.shape or not np.array_equal(a.order, b.order):
            raise ExportError(f"the sum of {_names(a)} and {_names(b)} mixes layouts {a.shape} and {b.shape}")
        return _Value(a.terms + b.terms, a.shape, a.order)
    if prim in ("mul", "div") and isinstance(x, _Pool):
        c = _scalar(ins[1] if ins[0] is x else ins[0])
        if c is not None and (prim == "mul" or ins[0] is x):
            return dataclasses.replace(x, scale=x.scale * c if prim == "mul" else x.scale / c)
    if prim == "reduce_window_sum" and isinstance(x, _Value) and _is_map(x):
        window, strides = params["window_dimensions"], params["window_strides"]
        padding = params["padding"]
        if (tuple(window[:lead]) + (window[-1],) == (1,) * (lead + 1)
                and tuple(strides[:lead]) + (strides[-1],) == (1,) * (lead + 1)
                and all(lo == hi for lo, hi in padding) and set(params["base_dilation"]) == {1}
                and set(params["window_dilation"]) == {1}):
            return _Pool(x, tuple(window[lead:lead + 2]), tuple(strides[lead:lead + 2]),
                         tuple(lo for lo, _ in padding[lead:lead + 2]), out_shape, False, _names(x))
    if prim == "reduce_sum" and isinstance(x, _Value) and _is_map(x) and tuple(params["axes"]) == (lead, lead + 1):
        h, w, _ = x.order.shape
        return _Pool(x, (h, w), (h, w), (0, 0), out_shape, True, _names(x))
    if prim == "reshape" and params.get("dimensions") is None:
        value = builder.materialise(x)
        new = tuple(params["new_sizes"])
        if new[:lead] != _LEAD:
            raise ExportError(f"a reshape after {_names(value)} mixes the time and batch axes ({new})")
        if new[lead:] == value.order.shape:
            return value
        if len(new) == lead + 1:  # flatten
            order = value.order.reshape(-1)
            if len(value.shape) == 1:
                return dataclasses.replace(value, order=order)
            flat = builder.add("flatten", nir.Flatten(input_type={"input": np.array(value.shape)}, start_dim=0),
                               value.terms)
            return _Value((flat,), (int(np.prod(value.shape)),), order)
    if prim in _LINEAR and not (prim in ("mul", "dot_general") and sum(isinstance(v, _TENSORS) for v in ins) > 1):
        return _compose(primitive, params, ins, out_shape, builder)
    what = {"reduce_window_max": "max-pooling", "reduce_max": "max-pooling"}.get(prim, prim)
    raise ExportError(f"{what} ({prim}) after {_names(x)} has no NIR node (NIR 1.0 pools with AvgPool2d and "
                      f"SumPool2d only)" if what == "max-pooling" else
                      f"the operation {prim} after {_names(x)} has no NIR node")


def _uses(jaxpr, uses: dict | None = None) -> dict:
    """How many times each variable of ``jaxpr`` and its sub-jaxprs is read."""
    uses = {} if uses is None else uses
    for var in [v for eqn in jaxpr.eqns for v in eqn.invars] + list(jaxpr.outvars):
        if isinstance(var, jex.Var):
            uses[var] = uses.get(var, 0) + 1
    for eqn in jaxpr.eqns:
        for sub in jex.jaxprs_in_params(eqn.params):
            _uses(sub, uses)
    return uses


def to_nir(model: nn.Module, variables: dict, *, input_shape: Sequence[int], timesteps: int,
           reset: str | None = None, dt: float = DEFAULT_DT) -> nir.NIRGraph:
    """The evaluation network of ``model`` as a NIR graph of one time step (SPEC §7).

    Args:
      model: a zoo model or any flax Module built with ratebp_jax.layers (Conv,
        Dense, BatchNorm, LIF) whose __call__(x, *, mode) takes leading axes;
        flax's average pooling, means over H and W, reshapes and sums may sit
        between the layers.
      variables: {"params", "batch_stats"}; BatchNorm uses the running statistics.
      input_shape: one input [H, W, C] (or [N]) as the model reads it,
        normalised; the graph's Input node is [C, H, W] (or [N]).
      timesteps: T, recorded in the metadata: the image is presented at each
        of T steps and the prediction is the mean over them of the output.
      reset: None (or "hard"): every LIF must reset hard, as NIR's LIF does;
        "soft": soft-reset LIF layers export too, their subtractive reset
        recorded in the node's metadata ("reset": "subtract"; hard ones say
        "zero") and in the graph's.
      dt: the time step in seconds; τ = dt/(1 − λ), R = τ/dt (unit input gain).
    Returns:
      nir.NIRGraph with nodes named after the layers' module paths, an "input"
      and an "output" node, and metadata {"dt", "timesteps", "reset", ...}.
    Raises:
      ExportError (a ValueError), one line naming the layer or operation that
      has no exact NIR equivalent.
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if reset not in (None, "soft", "hard"):
        raise ValueError(f"reset must be None, 'soft' or 'hard', got {reset!r}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) not in (1, 3):
        raise ValueError(f"input_shape must be [H, W, C] or [N], got {input_shape}")
    variables = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
    leaves = jax.tree.leaves(variables.get("params", {}))
    dtype = jnp.float64 if leaves and all(x.dtype == jnp.float64 for x in leaves) else jnp.float32
    closed, calls = _trace(model, variables, input_shape, dtype)
    builder = _Builder(calls, _uses(closed.jaxpr), reset, dt)
    if len(input_shape) == 3:
        h, w, c = input_shape
        source = _Value(("input",), (c, h, w), _map_order(h, w, c))
    else:
        source = _Value(("input",), input_shape, np.arange(input_shape[0]))
    builder.nodes["input"] = nir.Input(input_type={"input": np.array(source.shape)})
    (out,) = _interpret(closed, [source], builder)
    out = builder.materialise(out)
    if "input" in out.terms:
        raise ExportError("the input reaches the output without passing a layer")
    nodes, edges = builder.nodes, builder.edges
    nodes["output"] = nir.Output(output_type={"output": np.array(out.shape)})
    edges += [(term, "output") for term in out.terms]
    used = {src for src, _ in edges}
    if "input" not in used:
        raise ExportError("the network's output does not depend on its input")
    resets = sorted(_RESET_NAMES[r] for r in builder.resets) or ["none"]
    metadata = {
        "source": "ratebp_jax", "dt": dt, "timesteps": timesteps, "reset": ",".join(resets),
        "input": "the normalised input, channels first, presented unchanged at each of the T time steps "
                 "(direct coding)",
        "readout": "the mean over the T time steps of the output node",
        "firing": "ratebp_jax fires at v >= v_threshold, NIR at v > v_threshold (equal only at equality)",
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
