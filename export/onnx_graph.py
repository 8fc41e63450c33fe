"""Build one combination's ONNX graph with ``onnx.helper`` from folded numpy weights.

Writing the graph by hand (rather than tracing with ``torch.onnx.export``) gives byte-identical
files for identical checkpoints and exact control over what is in the file: only the sliced
weights, one Gemm per Linear, no mask constant, no unused initializer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inclust_plus import __version__
from inclust_plus.errors import InclustError
from inclust_plus.contract.combinations import Combination
from inclust_plus.contract.plan import PreprocessPlan
from inclust_plus.training.network import activations
from inclust_plus.training.network.loss import L2_EPS

from .csr_graph import densify
from .folding import FoldedWeights, Layer

OPSET = 17
IR_VERSION = 8  # the IR version that introduced opset 17: loadable by onnxruntime >= 1.13
BATCH = "batch"
_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "int32": TensorProto.INT32}


class _Builder:
    """Collects nodes and initializers; every intermediate gets a readable, unique name."""

    def __init__(self, half: bool = False) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.half = half  # network weights (not preprocessing constants) stored and run as float16

    def weight(self, name: str, value: np.ndarray) -> str:
        """A network weight: float16 in a half-precision graph, float32 otherwise."""
        return self.const(name, value.astype(np.float16) if self.half else value)

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.array(value, order="C"), name)  # keeps 0-d scalars 0-d
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def ops(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> list[str]:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs))
        return outputs

    def linear(self, x: str, layer: Layer, output: str | None = None) -> str:
        """Gemm (transB=1) plus the layer's activation; the last node writes ``output`` if given.

        A grouped layer runs as one batched MatMul over its groups: [N, G*i] -> [G, N, i] @ [G, i, o]
        -> [N, G*o], then the bias.
        """
        b = self.weight(f"{layer.name}.bias", layer.bias)
        identity = activations.TABLE[layer.activation].onnx is None
        pre = output if (identity and output) else f"{layer.name}.gemm"
        if layer.groups == 1:
            y = self.op("Gemm", [x, self.weight(f"{layer.name}.weight", layer.weight), b], pre, transB=1)
        else:
            g, o, i = layer.weight.shape
            w = self.weight(f"{layer.name}.weight", np.ascontiguousarray(layer.weight.transpose(0, 2, 1)))
            split = self.op("Reshape", [x, self.const(f"{layer.name}.in_shape", np.asarray([0, g, i], dtype=np.int64))], f"{layer.name}.in_groups")
            per_group = self.op("Transpose", [split], f"{layer.name}.by_group", perm=[1, 0, 2])
            y = self.op("MatMul", [per_group, w], f"{layer.name}.matmul")
            y = self.op("Transpose", [y], f"{layer.name}.by_cell", perm=[1, 0, 2])
            y = self.op("Reshape", [y, self.const(f"{layer.name}.out_shape", np.asarray([0, g * o], dtype=np.int64))], f"{layer.name}.joined")
            y = self.op("Add", [y, b], pre)
        const = lambda name, value: self.weight(name, np.asarray(value, dtype=np.float32))  # noqa: E731 (the graph's float type)
        return activations.onnx_nodes(layer.activation, self.op, const, y, output or f"{layer.name}.{layer.activation}")


def _log1p(b: _Builder, x: str, name: str) -> str:
    one = b.const("preprocess.one", np.asarray(1.0, dtype=np.float32))
    return b.op("Log", [b.op("Add", [x, one], f"{name}.plus1")], name)


def _preprocessing(b: _Builder, x: str, plan: PreprocessPlan) -> str:
    """Normalisation and log1p per modality run (the per-feature scale is already in the weights).

    x is split into runs only when the runs need different treatment; a log1p shared by every
    run is applied once, after the runs are joined again.
    """
    if not plan.has_ops:
        return x
    normalizes = any(g.normalize_total is not None for g in plan.groups)
    all_log = all(plan.groups[g].log1p for _, _, g in plan.runs)
    if len(plan.runs) > 1 and not normalizes and all_log:
        return _log1p(b, x, "x.preprocessed")
    if len(plan.runs) == 1:
        parts = [x]
    else:
        sizes = np.asarray([e - s for s, e, _ in plan.runs], dtype=np.int64)
        parts = b.ops("Split", [x, b.const("preprocess.run_sizes", sizes)], [f"x.run{i}" for i in range(len(plan.runs))], axis=1)
    axes = None
    factors: dict[int, str] = {}
    for g, prep in enumerate(plan.groups):
        if prep.normalize_total is None:
            continue
        axes = axes or b.const("preprocess.axis1", np.asarray([1], dtype=np.int64))
        total = None
        for i, (_, _, grp) in enumerate(plan.runs):
            if grp != g:
                continue
            s = b.op("ReduceSum", [parts[i], axes], f"preprocess.{prep.name}.sum{i}", keepdims=1)
            total = s if total is None else b.op("Add", [total, s], f"preprocess.{prep.name}.sum_to{i}")
        zero = b.const("preprocess.zero", np.asarray(0.0, dtype=np.float32))
        one = b.const("preprocess.one", np.asarray(1.0, dtype=np.float32))
        is_zero = b.op("Equal", [total, zero], f"preprocess.{prep.name}.empty")
        lib = b.op("Where", [is_zero, one, total], f"preprocess.{prep.name}.library_size")
        target = b.const(f"preprocess.{prep.name}.normalize_total", np.asarray(prep.normalize_total, dtype=np.float32))
        factors[g] = b.op("Div", [target, lib], f"preprocess.{prep.name}.factor")
    out = []
    for i, (_, _, g) in enumerate(plan.runs):
        part = parts[i]
        if g in factors:
            part = b.op("Mul", [part, factors[g]], f"preprocess.run{i}.normalized")
        if plan.groups[g].log1p and not all_log:
            part = _log1p(b, part, f"preprocess.run{i}.log1p")
        out.append(part)
    if len(out) == 1:
        joined = out[0]
    else:
        joined = b.op("Concat", out, "x.preprocessed" if not all_log else "x.normalized", axis=1)
    return _log1p(b, joined, "x.preprocessed") if all_log else joined


def _members_std(b: _Builder, members: str, half: bool) -> str:
    """``y_std``: the members' per-feature standard deviation, sqrt(mean_k (y_k - mean)^2), float32.

    The population form (divided by K), as ``InClustModule.predict(return_std=True)``; folded like
    the mean (one Reduce over the member axis of the [batch, K, n_outputs] block, no member loop).
    A float16 graph casts the members' values to float32 first: squared deviations of ~1e-3 are
    below float16's normal range.
    """
    z = b.op("Cast", [members], "y.members.fp32", to=TensorProto.FLOAT) if half else members
    mean = b.op("ReduceMean", [z], "y_std.mean", axes=[1], keepdims=1)
    dev = b.op("Sub", [z, mean], "y_std.deviation")
    var = b.op("ReduceMean", [b.op("Mul", [dev, dev], "y_std.squared")], "y_std.variance", axes=[1], keepdims=0)
    return b.op("Sqrt", [var], "y_std")


def _value_info(t, width: int | None) -> onnx.ValueInfoProto:
    shape = [t.axis] if width is None else [t.axis, width]
    return helper.make_tensor_value_info(t.name, _DTYPES[t.dtype], shape)


def build_model(
    weights: FoldedWeights,
    combination: Combination,
    plan: PreprocessPlan,
    model_name: str,
    input_format: str = "dense",
    precision: str = "fp32",
    lookup_input: bool = False,
) -> onnx.ModelProto:
    """The folded graph of ``combination``; inputs and outputs follow the graph table (:func:`inclust_plus.contract.graphs.graph_io`).

    ``input_format="csr"``: the graph takes a batch's stored entries (export/csr_graph.py).
    ``precision="fp16"``: float16 weights and arithmetic from the first layer on (preprocessing and
    the L2 norm stay float32), float32 inputs and outputs, for GPUs with fast half precision.
    ``lookup_input``: also name ``x.seen``, the input as the encoder reads it in the training scale (preprocessed,
    divided by the per-feature scale, corrected): what the neighbour read-out compares (export/neighbours_graph.py).
    """
    spec = combination.spec_for(input_format)
    half = precision == "fp16"
    b = _Builder(half=half)
    name = (lambda n: f"{n}.fp16") if half else (lambda n: n)
    h = _preprocessing(b, densify(b, len(combination.inputs)) if input_format == "csr" else "x", plan)
    if weights.input_gain is not None:  # the input correction, in float32 like the preprocessing
        gain = b.op("Gather", [b.const("input_gain", weights.input_gain), "covariate"], "input_gain.rows", axis=0)
        power = b.op("Gather", [b.const("input_power", weights.input_power), "covariate"], "input_power.rows", axis=0)
        magnitude = b.op("Pow", [b.op("Abs", [h], "x.abs"), power], "x.abs.pow")
        h = b.op("Mul", [b.op("Mul", [b.op("Sign", [h], "x.sign"), magnitude], "x.pow"), gain], "x.corrected")
    if lookup_input:  # (the correction's gain already holds the scale; otherwise it is in the weights, so divide here)
        if weights.input_gain is None and plan.scale is not None:
            b.op("Div", [h, b.const("lookup.scale", plan.scale.astype(np.float32))], "x.seen")
        else:
            b.op("Identity", [h], "x.seen")
    if weights.input_l2:
        if weights.input_scale is not None:
            h = b.op("Div", [h, b.const("input_scale", weights.input_scale)], "x.scaled")
        norm = b.op("ReduceL2", [h], "x.l2norm", axes=[1], keepdims=1)
        norm = b.op("Max", [norm, b.const("l2_eps", np.asarray(L2_EPS, dtype=np.float32))], "x.l2norm.clamped")
        h = b.op("Div", [h, norm], "x.unit")
    if half:
        h = b.op("Cast", [h], "x.fp16", to=TensorProto.FLOAT16)
    for layer in weights.encoder:
        h = b.linear(h, layer)
    embedding = b.weight("covariate_embedding", weights.covariate_embedding)
    e_b = b.op("Gather", [embedding, "covariate"], "covariate_embedding.source", axis=0)
    latent = b.op("Sub", [h, e_b], name("latent"))
    logits = b.linear(latent, weights.classifier)
    b.op("Softmax", [logits], name("label_probs"), axis=-1)
    if spec.decodes:
        e_t = b.op("Gather", [embedding, "target_covariate"], "covariate_embedding.target", axis=0)
        z = b.op("Add", [latent, e_t], "latent.in_target")
        last = name("y") if weights.members == 1 else None
        for i, layer in enumerate(weights.decoder):
            z = b.linear(z, layer, output=last if i == len(weights.decoder) - 1 else None)
        if weights.members > 1:  # the ensemble's mean over its members' blocks of outputs
            shape = b.const("members.shape", np.asarray([0, weights.members, weights.n_outputs], dtype=np.int64))
            z = b.op("Reshape", [z, shape], "y.members")
            b.op("ReduceMean", [z], name("y"), axes=[1], keepdims=0)
            _members_std(b, z, half)
    if half:
        for t in spec.outputs:
            if t.name != "y_std":  # computed in float32 already
                b.op("Cast", [name(t.name)], t.name, to=TensorProto.FLOAT)

    widths = combination.widths(weights.latent_dim, weights.n_labels)
    graph = helper.make_graph(
        b.nodes,
        combination.name,
        [_value_info(t, widths.get(t.width)) for t in spec.inputs],
        [_value_info(t, widths.get(t.width)) for t in spec.outputs],
        initializer=list(b.initializers.values()),
        doc_string=f"inClust+ model {model_name!r}, combination {combination.name!r} ({combination.kind}), masks folded"
        + ("" if (input_format, precision) == ("dense", "fp32") else f"; {input_format} input, {precision}"),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="inclust-plus",
        producer_version=__version__,
        ir_version=IR_VERSION,
    )
    helper.set_model_props(
        model,
        {"inclust.model": model_name, "inclust.combination": combination.name, "inclust.kind": combination.kind}
        | ({} if (input_format, precision) == ("dense", "fp32") else {"inclust.input_format": input_format, "inclust.precision": precision}),
    )
    check(model)
    return model


def check(model: onnx.ModelProto) -> None:
    """onnx.checker (full) and strict shape inference: every intermediate must get a known shape."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise InclustError(f"exported graph {model.graph.name!r} fails onnx.checker: {str(err).splitlines()[0]}", "this is a bug; please report it") from None
    known = {v.name for v in inferred.graph.value_info} | {v.name for v in inferred.graph.output}
    for node in inferred.graph.node:
        for out in node.output:
            if out not in known:
                raise InclustError(f"shape inference left {out!r} without a shape in graph {model.graph.name!r}", "this is a bug; please report it")


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic bytes (no maps in ONNX protos, so protobuf output is stable)."""
    return model.SerializeToString(deterministic=True)
