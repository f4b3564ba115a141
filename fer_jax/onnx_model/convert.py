"""A JAX function's jaxpr as an ONNX graph, for the primitives the project's networks use.

Why our own: jax2onnx (the maintained JAX-to-ONNX converter) pins orbax-checkpoint
below 0.11.37, older than this project's, and jax2tf + tf2onnx needs jax2tf's graph
serialization, which JAX no longer has (native serialization gives an XlaCallModule op
that tf2onnx cannot read). A jaxpr of an inference pass holds only a dozen primitives,
each one ONNX operator or two, so the graph is written here with the `onnx` package.

The batch axis stays symbolic: the function is traced with a `jax.export` symbolic
dimension, which becomes -1 in reshapes and 1 (broadcast by ONNX) in expands.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from jax.extend.core import Literal
import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 18
_ELEMENTWISE = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
                "exp": "Exp", "logistic": "Sigmoid", "neg": "Neg", "sqrt": "Sqrt", "tanh": "Tanh",
                "log": "Log", "abs": "Abs", "stop_gradient": "Identity", "copy": "Identity"}
_REDUCTIONS = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}


class UnsupportedPrimitive(NotImplementedError):
    """The function uses a JAX primitive this converter does not translate."""


def _is_symbolic(dim) -> bool:
    return not isinstance(dim, (int, np.integer))


def _onnx_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Graph:
    """The nodes and constants of the graph being written, and JAX variables' ONNX names."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self.names: dict = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str | None = None, **attributes) -> str:
        output = self.fresh(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def read(self, atom) -> str:
        if isinstance(atom, Literal):
            return self.constant(np.asarray(atom.val, dtype=atom.aval.dtype), "literal")
        return self.names[atom]


def _shape_constant(graph: _Graph, shape, symbolic_as: int) -> str:
    return graph.constant(np.array([symbolic_as if _is_symbolic(d) else int(d) for d in shape], np.int64), "shape")


def _broadcast_in_dim(graph: _Graph, x: str, operand_shape, shape, dims) -> str:
    rank_matched = [1] * len(shape)
    for operand_axis, out_axis in enumerate(dims):
        rank_matched[out_axis] = operand_shape[operand_axis]
    reshaped = graph.node("Reshape", [x, _shape_constant(graph, rank_matched, -1)])
    return graph.node("Expand", [reshaped, _shape_constant(graph, shape, 1)])


def _conv(graph: _Graph, eqn, lhs: str, rhs: str) -> str:
    p = eqn.params
    numbers = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p.get("batch_group_count", 1) != 1:
        raise UnsupportedPrimitive("conv_general_dilated with input dilation or batch groups")
    lhs_nchw = graph.node("Transpose", [lhs], perm=list(numbers.lhs_spec))
    kernel = eqn.invars[1]
    if isinstance(kernel, Literal):
        raise UnsupportedPrimitive("a literal convolution kernel")
    oihw = graph.node("Transpose", [rhs], perm=list(numbers.rhs_spec))
    padding = p["padding"]
    pads = [int(lo) for lo, _ in padding] + [int(hi) for _, hi in padding]
    out = graph.node("Conv", [lhs_nchw, oihw], strides=[int(s) for s in p["window_strides"]], pads=pads,
                     dilations=[int(d) for d in p["rhs_dilation"]], group=int(p["feature_group_count"]))
    return graph.node("Transpose", [out], perm=[int(i) for i in np.argsort(numbers.out_spec)])


def _dot_general(graph: _Graph, eqn, lhs: str, rhs: str) -> str:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    lhs_rank, rhs_rank = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
    if lhs_batch or rhs_batch or tuple(lhs_contract) != (lhs_rank - 1,) or tuple(rhs_contract) != (0,) or rhs_rank != 2:
        raise UnsupportedPrimitive(f"dot_general with dimension numbers {eqn.params['dimension_numbers']}")
    return graph.node("MatMul", [lhs, rhs])


def _slice(graph: _Graph, eqn, x: str) -> str:
    """lax.slice (static starts, limits, strides) as ONNX Slice; the batch axis is never cut."""
    p = eqn.params
    shape = eqn.invars[0].aval.shape
    strides = p["strides"] or (1,) * len(shape)
    axes = [axis for axis, (start, limit, size) in enumerate(zip(p["start_indices"], p["limit_indices"], shape))
            if start != 0 or limit != size or strides[axis] != 1]
    if any(_is_symbolic(shape[a]) for a in axes):
        raise UnsupportedPrimitive("slice along the symbolic batch axis")
    return graph.node("Slice", [x, graph.constant(np.array([p["start_indices"][a] for a in axes], np.int64), "starts"),
                                graph.constant(np.array([p["limit_indices"][a] for a in axes], np.int64), "ends"),
                                graph.constant(np.array(axes, np.int64), "axes"),
                                graph.constant(np.array([strides[a] for a in axes], np.int64), "steps")])


def _emit(graph: _Graph, eqn) -> list[str]:
    """ONNX names of the outputs of one jaxpr equation."""
    name = eqn.primitive.name
    inputs = [graph.read(v) for v in eqn.invars]
    if name in ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat"):
        inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
        return _inline(graph, inner, inputs)
    if name in _ELEMENTWISE:
        return [graph.node(_ELEMENTWISE[name], inputs)]
    if name == "rsqrt":
        return [graph.node("Reciprocal", [graph.node("Sqrt", inputs)])]
    if name == "integer_pow":
        exponent = graph.constant(np.array(eqn.params["y"], eqn.invars[0].aval.dtype))
        return [graph.node("Pow", [inputs[0], exponent])]
    if name in _REDUCTIONS:
        axes = graph.constant(np.array(eqn.params["axes"], np.int64), "axes")
        return [graph.node(_REDUCTIONS[name], [inputs[0], axes], keepdims=0)]
    if name == "reshape":
        if eqn.params.get("dimensions") is not None:
            raise UnsupportedPrimitive("reshape with a transposition")
        return [graph.node("Reshape", [inputs[0], _shape_constant(graph, eqn.params["new_sizes"], -1)])]
    if name == "broadcast_in_dim":
        return [_broadcast_in_dim(graph, inputs[0], eqn.invars[0].aval.shape, eqn.params["shape"],
                                  eqn.params["broadcast_dimensions"])]
    if name == "convert_element_type":
        return [graph.node("Cast", inputs, to=_onnx_type(eqn.params["new_dtype"]))]
    if name == "concatenate":
        return [graph.node("Concat", inputs, axis=int(eqn.params["dimension"]))]
    if name == "transpose":
        return [graph.node("Transpose", inputs, perm=[int(i) for i in eqn.params["permutation"]])]
    if name == "squeeze":
        axes = graph.constant(np.array(eqn.params["dimensions"], np.int64), "axes")
        return [graph.node("Squeeze", [inputs[0], axes])]
    if name == "slice":
        return [_slice(graph, eqn, inputs[0])]
    if name == "conv_general_dilated":
        return [_conv(graph, eqn, *inputs)]
    if name == "dot_general":
        return [_dot_general(graph, eqn, *inputs)]
    raise UnsupportedPrimitive(f"no ONNX translation for the JAX primitive {name!r}")


def _inline(graph: _Graph, closed, inputs: list[str]) -> list[str]:
    jaxpr = closed.jaxpr if hasattr(closed, "jaxpr") else closed
    consts = closed.consts if hasattr(closed, "consts") else []
    for var, value in zip(jaxpr.constvars, consts):
        graph.names[var] = graph.constant(np.asarray(value), "weight")
    for var, name in zip(jaxpr.invars, inputs):
        graph.names[var] = name
    for eqn in jaxpr.eqns:
        for var, name in zip(eqn.outvars, _emit(graph, eqn)):
            graph.names[var] = name
    return [graph.read(v) for v in jaxpr.outvars]


def to_onnx(fn: Callable[[Any], Any], example: jax.ShapeDtypeStruct, *, input_name: str = "input",
            output_name: str = "output", batch_name: str = "batch", doc: str = "") -> onnx.ModelProto:
    """The ONNX model of fn (one array in, one out), batch axis 0 symbolic.

    example: the input's shape and dtype; its first dimension is replaced by a symbol.
    Everything fn closes over (weights) becomes the graph's constants.
    """
    symbolic = jax.export.symbolic_shape(", ".join([batch_name] + [str(d) for d in example.shape[1:]]))
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct(symbolic, example.dtype))
    graph = _Graph()
    graph.names[closed.jaxpr.invars[0]] = input_name
    (result,) = _inline(graph, closed, [input_name])
    graph.nodes.append(helper.make_node("Identity", [result], [output_name]))
    out_aval = closed.jaxpr.outvars[0].aval

    def value_info(name, aval):
        dims = [batch_name if _is_symbolic(d) else int(d) for d in aval.shape]
        return helper.make_tensor_value_info(name, _onnx_type(aval.dtype), dims)

    onnx_graph = helper.make_graph(graph.nodes, "fer_jax", [value_info(input_name, closed.jaxpr.invars[0].aval)],
                                   [value_info(output_name, out_aval)], graph.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fer_jax", doc_string=doc)
    model.ir_version = 9  # readable by onnxruntime 1.16 and later
    onnx.checker.check_model(model)
    return model


__all__ = ["OPSET", "UnsupportedPrimitive", "to_onnx"]
