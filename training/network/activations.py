"""The activation functions a network may use: one table, read by everything that names one.

Why one table: an activation appears in the config's choices, the torch module (training and the
TorchScript/torch.export twins build it from here), and the ONNX writer (export/onnx_graph.py writes
the nodes given here). Adding one is one entry. The hand-written training step
(training/fast_step/manual_step.py) is not driven by this table: it covers only the activations it lists and
is tested on, and any other one trains with autograd.

Importing this module does not import torch (the config is checked before torch is loaded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

# An ONNX recipe writes the activation of ``x`` and returns the name of its output, which is ``name``:
# recipe(op, const, x, name) with op(op_type, inputs, output) -> output and const(name, float) -> a
# scalar initializer of the graph's float type.
OnnxRecipe = Callable[[Callable[..., str], Callable[[str, float], str], str, str], str]


@dataclass(frozen=True)
class Activation:
    name: str
    torch_class: str  # the torch.nn module class (its default arguments)
    onnx: OnnxRecipe | None  # None: the identity, no node at all


def _unary(op_type: str) -> OnnxRecipe:
    return lambda op, const, x, name: op(op_type, [x], name)


def _gelu(op, const, x, name):
    """The exact GELU, x * Phi(x) = (x / 2) (1 + erf(x / sqrt 2)), as torch computes it; opset 17 has
    Erf but not Gelu (opset 20), so it is composed."""
    erf = op("Erf", [op("Mul", [x, const("gelu.inv_sqrt2", 1 / math.sqrt(2))], f"{name}.scaled")], f"{name}.erf")
    half_x = op("Mul", [x, const("gelu.half", 0.5)], f"{name}.half_x")
    return op("Mul", [half_x, op("Add", [erf, const("gelu.one", 1.0)], f"{name}.erf_plus1")], name)


TABLE: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", "ReLU", _unary("Relu")),
    Activation("tanh", "Tanh", _unary("Tanh")),
    Activation("sigmoid", "Sigmoid", _unary("Sigmoid")),
    Activation("identity", "Identity", None),
    Activation("gelu", "GELU", _gelu),
)}
NAMES = tuple(TABLE)


def module(name: str):
    """A fresh torch module computing activation ``name`` (scriptable and exportable)."""
    from torch import nn

    return getattr(nn, TABLE[name].torch_class)()


def onnx_nodes(name: str, op: Callable[..., str], const: Callable[[str, float], str], x: str, output: str) -> str:
    """Write activation ``name`` of ``x`` as ONNX nodes ending in ``output``; the identity writes none and returns ``x``."""
    recipe = TABLE[name].onnx
    return x if recipe is None else recipe(op, const, x, output)

