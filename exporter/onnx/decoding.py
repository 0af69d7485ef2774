"""Storage compression in the ONNX file: each decoded weight's dense initializer becomes a constant subgraph.

The exporter writes a storage-compressed Linear (``DecodedLinear``) with its decoded dense weight, which is
what torch computes with. This pass finds that initializer by its values (as stored, or transposed as a MatMul
holds it) and replaces it with latents, norms and the decoder (its weights stored once per group):
Gemm -> LeakyRelu -> Gemm -> LeakyRelu -> Gemm -> Tanh -> LpNormalization -> Mul(norms) [-> Transpose].
Every input is constant, so onnxruntime folds the subgraph into the dense weight when the session is created:
a smaller file, the dense weight in memory, the original FLOPs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from edgefold.exporter.methods import RowDecoder
from edgefold.exporter.nn.layers import DecodedLinear
from edgefold.exporter.onnx import passes
from edgefold.runtime import EdgefoldError

_PREFIX = "edgefold_stored"


def _key(array: np.ndarray) -> tuple:
    return array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def store_decoded_weights(model: onnx.ModelProto, network: nn.Module) -> int:
    """Replace the dense initializer of every ``DecodedLinear`` in ``network`` by its decoding subgraph.

    Raises when a decoded weight is not found in the graph, or when a matrix of a decoded weight's shape that
    the model does not otherwise hold survives (a dense copy). Returns how many weights now decode at load.
    """
    modules = [(name, m) for name, m in network.named_modules() if isinstance(m, DecodedLinear)]
    if not modules:
        return 0
    graph = model.graph
    by_value: dict[tuple, list[onnx.TensorProto]] = {}
    for init in graph.initializer:
        if len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT:
            by_value.setdefault(_key(numpy_helper.to_array(init)), []).append(init)
    decoders: dict[int, list[str]] = {}
    nodes: list[onnx.NodeProto] = []
    for name, module in modules:
        weight = module.weight.detach().numpy()
        found = [(init, False) for init in by_value.get(_key(weight), [])]
        found += [(init, True) for init in by_value.get(_key(weight.T), [])]
        if not found:
            raise EdgefoldError(f"the exported graph holds no initializer equal to the decoded weight of {name}: "
                                "cannot store it compressed")
        dense = _decode(graph, nodes, name, module, decoders)
        for init, transposed in found:
            graph.initializer.remove(init)
            op, attributes = ("Transpose", {"perm": [1, 0]}) if transposed else ("Identity", {})
            nodes.append(helper.make_node(op, [dense], [init.name], name=f"{_PREFIX}/{init.name}", **attributes))
    for position, node in enumerate(nodes):  # constants first: every consumer comes after
        graph.node.insert(position, node)
    decoded = [m.weight for _, m in modules]
    others = [tuple(t.shape) for t in [*network.parameters(), *network.buffers()] if all(t is not w for w in decoded)]
    passes.check_no_dense_copies(model, {tuple(w.shape) for w in decoded}, others)
    return len(modules)


def _decode(graph: onnx.GraphProto, nodes: list, name: str, module: DecodedLinear, decoders: dict) -> str:
    """Add the nodes that decode ``module``'s weight (out x in); returns the name of their output."""
    stored = module.stored()
    prefix = f"{_PREFIX}/{name}"
    latent, norms = f"{prefix}/latent", f"{prefix}/norms"
    graph.initializer.extend([numpy_helper.from_array(stored.latent.detach().numpy(), latent),
                              numpy_helper.from_array(stored.norms.detach().numpy()[:, None], norms)])
    layers = decoders.get(id(stored.decoder)) or _add_decoder(graph, stored.decoder, len(decoders), decoders)
    hidden = latent
    for i, (weight, bias) in enumerate(layers):
        out = f"{prefix}/linear{i}"
        nodes.append(helper.make_node("Gemm", [hidden, weight, bias], [out], name=out, transB=1))
        last = i == len(layers) - 1
        activation = helper.make_node("Tanh", [out], [f"{out}/act"], name=f"{out}/act") if last else \
            helper.make_node("LeakyRelu", [out], [f"{out}/act"], name=f"{out}/act", alpha=stored.decoder.negative_slope)
        nodes.append(activation)
        hidden = f"{out}/act"
    nodes.append(helper.make_node("LpNormalization", [hidden], [f"{prefix}/direction"], name=f"{prefix}/direction",
                                  axis=1, p=2))
    nodes.append(helper.make_node("Mul", [f"{prefix}/direction", norms], [f"{prefix}/weight"], name=f"{prefix}/weight"))
    return f"{prefix}/weight"


def _add_decoder(graph: onnx.GraphProto, decoder: RowDecoder, index: int, decoders: dict) -> list[tuple[str, str]]:
    """Store a decoder's weights once (every module of its group refers to them); returns their names."""
    names = []
    for i, linear in enumerate(decoder.linears):
        weight, bias = f"{_PREFIX}/decoder{index}/linear{i}.weight", f"{_PREFIX}/decoder{index}/linear{i}.bias"
        graph.initializer.extend([numpy_helper.from_array(linear.weight.detach().numpy(), weight),
                                  numpy_helper.from_array(linear.bias.detach().numpy(), bias)])
        names.append((weight, bias))
    decoders[id(decoder)] = names
    return names
