"""The activation table (training/network/activations.py): each entry's torch module and its ONNX nodes compute
the same function, in float32 and in a float16 graph, and the config offers exactly the table."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from inclust_plus.training.network import activations
from inclust_plus.training import config

X = np.concatenate([np.linspace(-8, 8, 161), [-30.0, -1e-3, 0.0, 1e-3, 30.0]]).astype(np.float32)[None]


def _onnx_activation(name: str, dtype) -> np.ndarray:
    nodes, inits = [], []

    def op(op_type, inputs, output, **attrs):
        nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def const(cname, value):
        if cname not in [i.name for i in inits]:
            inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), cname))
        return cname

    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    out = activations.onnx_nodes(name, op, const, "x", "y")
    if out == "x":  # the identity writes no node
        return X.astype(dtype)
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", elem, [1, X.shape[1]])],
                              [helper.make_tensor_value_info("y", elem, [1, X.shape[1]])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": X.astype(dtype)})[0]


@pytest.mark.parametrize("name", activations.NAMES)
def test_onnx_nodes_compute_the_torch_module(name):
    want = activations.module(name)(torch.from_numpy(X)).numpy()
    assert np.ptp(want) > 0.9  # a function of x, not a constant
    np.testing.assert_allclose(_onnx_activation(name, np.float32), want, rtol=1e-6, atol=2e-7)
    half = _onnx_activation(name, np.float16).astype(np.float32)
    np.testing.assert_allclose(half, want, rtol=2e-3, atol=2e-3)  # float16 rounding of x and the result


def test_the_config_offers_exactly_the_table():
    assert config.ACTIVATIONS == activations.NAMES
    assert set(activations.NAMES) >= {"relu", "tanh", "sigmoid", "identity"}
