"""Read the weights of an encoder (and its task head) out of an ONNX file.

Works on files exported by :mod:`distilbert.export.onnx` and on ``torch.onnx.export`` of a
Hugging Face ``DistilBertModel`` / ``BertModel`` (or one of their heads), with either
exporter. Reading initializers is checkpoint loading, so this module lives in the engine and
needs only the ``onnx`` package, imported when a file is read.

How tensors become parameters, in three steps:

1. **Units.** The graph is scanned for the three shapes a weight can take: a *linear* (a
   ``MatMul`` whose second input is a constant matrix, or a ``Transpose`` of one, optionally
   followed by an ``Add`` of a constant vector; or a ``Gemm``), a *LayerNorm* (the
   ``LayerNormalization`` op, or the ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add pattern older
   opsets decompose it into) and an *embedding table* (a ``Gather`` from a constant matrix).
   Orientation comes from the graph, never from the shape: a matrix fed straight into
   ``MatMul`` is stored (in, out) and is transposed back; one behind a ``Transpose`` node or
   in a ``Gemm`` with ``transB=1`` is already (out, in). Constants reached through
   ``Identity`` or ``Cast`` nodes count as constants (the TorchScript exporter aliases
   de-duplicated initializers through ``Identity`` nodes, whose outputs carry the real names).
2. **Names.** Where the tensor name at a unit's edge survived export
   (``transformer.layer.0.attention.q_lin.bias``, ``bert.encoder.layer.0...``), it names the
   unit, unless the same tensor feeds several units (then it says nothing reliable).
3. **Structure.** Exporters rename transposed weights (``onnx::MatMul_123``, ``val_42``), so
   the encoder is also walked from ``input_ids``: the table looked up with ``input_ids`` is
   the word embedding; the other tables summed into it before the first LayerNorm are the
   position and token-type tables (a table indexed by the ``token_type_ids`` input, else the
   one with fewer rows, is the token-type table); then, per layer, the linears reading the
   hidden state are the fused QKV projection (one, three times as wide) or Q, K and V
   (three; Q and K meet in one ``MatMul``, Q on the left, and V feeds the other), the linear
   whose output is added back to the hidden state before the next LayerNorm is the output
   projection, and the same residual pattern gives the FFN's two linears and second
   LayerNorm. The walk ends when no linear reads the hidden state. A name from step 2 that
   disagrees with the walk is an error; where the walk fails, names alone must cover every
   encoder weight.

Everything after the encoder is left as head units in graph order; task heads match them by
name or, failing that, by order and shape (:func:`head_state`).

Limits: absolute position embeddings only; graphs rewritten by onnxruntime's transformer
optimizer (fused ``Attention``/``SkipLayerNormalization`` ops) are refused: import the
unoptimised export.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distilbert.engine import checkpoint
from distilbert.engine.config import DistilBertConfig

logger = logging.getLogger(__name__)

CONFIG_METADATA_KEY = "distilbert.config"
# Ops that only move or rescale values between a projection and the attention MatMul.
_LAYOUT_OPS = frozenset(
    {"Reshape", "Transpose", "Mul", "Div", "Cast", "Identity", "Unsqueeze", "Squeeze",
     "Split", "Slice", "Expand", "Contiguous"}
)
_PASS_OPS = frozenset({"Identity", "Cast", "Dropout"})  # Dropout: identity at inference
# Ops between a graph input and the indices of an embedding lookup.
_INDEX_OPS = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Unsqueeze", "Squeeze"})
_FUSED_OPS = frozenset(
    {"Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization"}
)


@dataclass(eq=False)
class Unit:
    """One weight-carrying piece of the graph: a linear, a LayerNorm or an embedding table."""

    kind: str  # "linear", "norm" or "table"
    weight: np.ndarray  # linear (out, in); norm (dim,); table (rows, dim)
    bias: np.ndarray | None
    edge_names: tuple[str, ...]  # tensor names at the unit's weight and bias edges
    input: str  # tensor the unit reads (a table: its indices)
    output: str  # tensor it produces (after the bias add, if any)
    order: int  # position of the unit's first node in the graph
    eps: float | None = None
    name: str | None = None  # module path it was matched to
    named_by: str | None = None  # the edge tensor whose name gave ``name``


@dataclass
class OnnxWeights:
    """What :func:`read_onnx_weights` found: config, encoder state and unmatched units."""

    path: Path
    config: DistilBertConfig
    encoder: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    head_units: list[Unit]


class _Graph:
    """Producers, consumers and constants of an ONNX graph, with the unit scanners."""

    def __init__(self, model, path: Path):
        from onnx import numpy_helper

        self.path = path
        self.model = model
        self.nodes = list(model.graph.node)
        self.consts: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in model.graph.initializer
        }
        for node in self.nodes:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.order = {id(node): i for i, node in enumerate(self.nodes)}
        self.inputs = [i.name for i in model.graph.input if i.name not in self.consts]

    def const(self, name: str) -> np.ndarray | None:
        """The constant value of tensor ``name``, through Identity and Cast nodes."""
        if name in self.consts:
            return self.consts[name]
        node = self.producer.get(name)
        if node is not None and node.op_type in _PASS_OPS and node.input:
            return self.const(node.input[0])
        return None

    def source(self, name: str) -> str:
        """Follow ``name`` back through Identity and Cast nodes to where it is made."""
        node = self.producer.get(name)
        while node is not None and node.op_type in _PASS_OPS and name not in self.consts:
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def readers(self, name: str) -> list[tuple[Any, str]]:
        """(node, tensor it reads) for every node using ``name``, seen through casts."""
        found, frontier = [], [name]
        while frontier:
            tensor = frontier.pop()
            for node in self.consumers.get(tensor, []):
                if node.op_type in _PASS_OPS:
                    frontier.extend(node.output)
                else:
                    found.append((node, tensor))
        return found

    def sole_consumer(self, name: str, op_type: str):
        """The only node reading ``name`` if it is an ``op_type`` node, else None."""
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and readers[0].op_type == op_type:
            return readers[0]
        return None

    def _matrix(self, name: str) -> tuple[np.ndarray, bool] | None:
        """A 2-D float constant feeding a MatMul; True when it sits behind a Transpose."""
        value = self.const(name)
        if value is not None:
            return (value, False) if _is_float_matrix(value) else None
        node = self.producer.get(name)
        if node is not None and node.op_type == "Transpose":
            value = self.const(node.input[0])
            perm = list(_attr(node, "perm", [1, 0]))
            if value is not None and _is_float_matrix(value) and perm == [1, 0]:
                return value, True
        return None

    def _bias_after(self, name: str, width: int) -> tuple[np.ndarray, str, str] | None:
        """A constant vector of ``width`` added to ``name``: (bias, its edge, the sum)."""
        add = self.sole_consumer(name, "Add")
        if add is None:
            return None
        other = add.input[1] if add.input[0] == name else add.input[0]
        value = self.const(other)
        if value is None or value.ndim != 1 or value.shape[0] != width:
            return None
        return value, other, add.output[0]

    def linears(self) -> list[Unit]:
        """Every MatMul or Gemm with a constant weight matrix, bias included."""
        units = []
        for node in self.nodes:
            if node.op_type == "MatMul":
                found = self._matrix(node.input[1])
                if found is None:
                    continue
                matrix, behind_transpose = found
                weight = matrix if behind_transpose else matrix.T
                out = node.output[0]
                edges = [self._edge(node.input[1])]
                bias = None
                found_bias = self._bias_after(out, weight.shape[0])
                if found_bias is not None:
                    bias, bias_edge, out = found_bias
                    edges.append(bias_edge)
            elif node.op_type == "Gemm":
                matrix = self.const(node.input[1])
                if matrix is None or not _is_float_matrix(matrix):
                    continue
                if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0:
                    raise ValueError(
                        f"{self.path}: Gemm node {node.name!r} uses transA or alpha != 1, "
                        "which no exported linear layer does"
                    )
                weight = matrix if _attr(node, "transB", 0) else matrix.T
                edges, bias, out = [node.input[1]], None, node.output[0]
                if len(node.input) > 2 and node.input[2]:
                    bias = self.const(node.input[2])
                    if bias is not None and _attr(node, "beta", 1.0) != 1.0:
                        bias = bias * _attr(node, "beta", 1.0)
                    edges.append(node.input[2])
            else:
                continue
            units.append(Unit(
                "linear", weight, bias, tuple(edges), node.input[0], out, self.order[id(node)]
            ))
        return units

    def _edge(self, name: str) -> str:
        node = self.producer.get(name)
        if node is not None and node.op_type == "Transpose":
            return node.input[0]
        return name

    def norms(self) -> list[Unit]:
        """Every LayerNorm: the ONNX op, or the decomposed pattern of opsets below 17."""
        units = []
        for node in self.nodes:
            if node.op_type == "LayerNormalization":
                if _attr(node, "axis", -1) != -1:
                    continue
                weight = self.const(node.input[1])
                bias = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                if weight is None:
                    continue
                edges = tuple(n for n in node.input[1:3] if n)
                units.append(Unit("norm", weight, bias, edges, node.input[0], node.output[0],
                                  self.order[id(node)], eps=_attr(node, "epsilon", 1e-5)))
            elif node.op_type == "Div":
                unit = self._decomposed_norm(node)
                if unit is not None:
                    units.append(unit)
        return units

    def _decomposed_norm(self, div) -> Unit | None:
        """(x - mean(x)) / sqrt(var + eps) * gamma + beta, matched from its Div node."""
        sub, sqrt = self.producer.get(div.input[0]), self.producer.get(div.input[1])
        if sub is None or sqrt is None or sub.op_type != "Sub" or sqrt.op_type != "Sqrt":
            return None
        mean = self.producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            return None
        mul = self.sole_consumer(div.output[0], "Mul")
        if mul is None:
            return None
        gamma_edge = mul.input[1] if mul.input[0] == div.output[0] else mul.input[0]
        gamma = self.const(gamma_edge)
        if gamma is None or gamma.ndim != 1:
            return None
        edges, beta, out = [gamma_edge], None, mul.output[0]
        found = self._bias_after(out, gamma.shape[0])
        if found is not None:
            beta, beta_edge, out = found
            edges.append(beta_edge)
        eps = None
        add = self.producer.get(sqrt.input[0])
        if add is not None and add.op_type == "Add":
            for name in add.input:
                value = self.const(name)
                if value is not None and value.size == 1:
                    eps = float(value.reshape(()))
        return Unit("norm", gamma, beta, tuple(edges), sub.input[0], out,
                    self.order[id(mean)], eps=eps)

    def tables(self) -> list[Unit]:
        """Every Gather from a constant float matrix (embedding lookups)."""
        units = []
        for node in self.nodes:
            if node.op_type != "Gather" or _attr(node, "axis", 0) != 0:
                continue
            table = self.const(node.input[0])
            if table is None or not _is_float_matrix(table):
                continue
            units.append(Unit("table", table, None, (node.input[0],), node.input[1],
                              node.output[0], self.order[id(node)]))
        return units


def _attr(node, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _is_float_matrix(value: np.ndarray) -> bool:
    return value.ndim == 2 and np.issubdtype(value.dtype, np.floating)


def load_model_proto(path: str | Path, load_external_data: bool = True):
    """Load an ONNX file (external data included), with a clear error when it is not one."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file does not exist: {path}")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as err:  # onnx raises protobuf DecodeError and others
        raise ValueError(f"{path} is not a readable ONNX model: {err}") from err


# ----------------------------------------------------------------------------------------
# Step 2: names that survived export
# ----------------------------------------------------------------------------------------

_MODULE_OF_EDGE = re.compile(r"^(.+)\.(weight|bias|gamma|beta)$")


def _name_hints(units: list[Unit]) -> None:
    """Name each unit after its edge tensors where their names are parameter names."""
    uses: dict[str, int] = defaultdict(int)
    for unit in units:
        for edge in unit.edge_names:
            uses[edge] += 1
    for unit in units:
        modules = {}
        for edge in unit.edge_names:
            match = _MODULE_OF_EDGE.match(edge)
            if match and uses[edge] == 1:
                key = next(iter(checkpoint.normalize_names({edge: None})))
                modules[key.rsplit(".", 1)[0]] = edge
        if len(modules) == 1:
            unit.name, unit.named_by = next(iter(modules.items()))


def _bare(name: str) -> str:
    """Module path without a ``distilbert.``/``bert.`` prefix."""
    prefix = next((p for p in checkpoint.BASE_PREFIXES if name.startswith(p)), "")
    return name[len(prefix):]


def _is_encoder(name: str) -> bool:
    bare = _bare(name)
    return bare != name or bare.startswith(checkpoint.BASE_ROOTS)


# ----------------------------------------------------------------------------------------
# Step 3: the structural walk
# ----------------------------------------------------------------------------------------


class _Walk:
    """Assigns encoder module paths to units by following the data flow from input_ids."""

    def __init__(self, graph: _Graph, linears, norms, tables):
        self.graph = graph
        self.tables = tables
        self.linear_by_input: dict[str, list[Unit]] = defaultdict(list)
        self.linear_by_output = {u.output: u for u in linears}
        self.norm_by_input = {graph.source(u.input): u for u in norms}
        for unit in linears:
            self.linear_by_input[graph.source(unit.input)].append(unit)
        self.assigned: dict[int, str] = {}
        self.n_layers = 0
        self.hidden_dim = None
        self.activation = None
        self.first_projection: Unit | None = None
        self.last_norm: Unit | None = None

    def fail(self, what: str):
        raise ValueError(f"{self.graph.path}: {what}")

    def assign(self, unit: Unit, name: str) -> None:
        self.assigned[id(unit)] = name

    def run(self) -> None:
        """Walk embeddings and every layer; raise ValueError naming the step that failed."""
        hidden = self.embeddings()
        while self._starts_layer(hidden):
            hidden = self.layer(self.n_layers, hidden)
            self.n_layers += 1
        if self.n_layers == 0:
            self.fail("no linear layer reads the embeddings' LayerNorm output")

    def embeddings(self) -> str:
        """Find the tables and LayerNorm of the embeddings; returns the hidden state."""
        graph = self.graph
        ids = "input_ids" if "input_ids" in graph.inputs else (graph.inputs or [None])[0]
        words = [t for t in self.tables if self._index_source(t.input) == ids]
        if len(words) != 1:
            self.fail(f"expected one embedding lookup reading {ids!r}, found {len(words)}")
        word = words[0]
        self.assign(word, "embeddings.word_embeddings")

        # Sum the lookups until the first LayerNorm; every other term is another table.
        tensor, others = word.output, []
        for _ in range(8):
            tensor = graph.source(tensor)
            norm = self.norm_by_input.get(tensor)
            if norm is not None:
                break
            readers = [n for n in graph.consumers.get(tensor, []) if n.op_type != "Shape"]
            if len(readers) != 1 or readers[0].op_type not in ("Add", "Cast", "Identity"):
                self.fail("cannot follow the embedding sum from the word lookup to a LayerNorm")
            node = readers[0]
            if node.op_type == "Add":
                others.append(node.input[1] if node.input[0] == tensor else node.input[0])
            tensor = node.output[0]
        else:
            self.fail("no LayerNorm after the embedding lookups")
        self.assign(norm, "embeddings.LayerNorm")

        extra = [t for name in others for t in self._tables_behind(name) if t is not word]
        token_type = [t for t in extra if self._index_source(t.input) == "token_type_ids"]
        rest = sorted((t for t in extra if t not in token_type), key=lambda t: -len(t.weight))
        if not token_type and len(rest) == 2:
            token_type = [rest.pop()]
        if len(rest) != 1 or len(token_type) > 1:
            self.fail(f"expected a position table (and maybe a token-type table) beside the "
                      f"word embeddings, found {len(extra)} table(s)")
        self.assign(rest[0], "embeddings.position_embeddings")
        if token_type:
            self.assign(token_type[0], "embeddings.token_type_embeddings")
        return norm.output

    def _index_source(self, name: str) -> str:
        """Follow lookup indices back through reshapes and casts (multiple choice flattens)."""
        for _ in range(8):
            node = self.graph.producer.get(name)
            if node is None or node.op_type not in _INDEX_OPS:
                break
            name = node.input[0]
        return name

    def _tables_behind(self, name: str, depth: int = 8) -> list[Unit]:
        """Tables whose output reaches ``name`` through a few nodes (Expand, Add, ...)."""
        by_output = {t.output: t for t in self.tables}
        found, frontier = [], [name]
        for _ in range(depth):
            nxt = []
            for tensor in frontier:
                if tensor in by_output:
                    found.append(by_output[tensor])
                    continue
                node = self.graph.producer.get(tensor)
                # A Shape node only passes on sizes, never table values.
                if node is not None and node.op_type != "Shape":
                    nxt.extend(i for i in node.input if i and i not in self.graph.consts)
            frontier = nxt
        return found

    def _starts_layer(self, hidden: str) -> bool:
        """Whether the linears reading ``hidden`` look like attention projections.

        A token-level head (a classifier, the MLM transform) also reads the last hidden
        state; one fused projection three times as wide, or three square ones, do not.
        """
        projections = self.linear_by_input.get(self.graph.source(hidden), [])
        shapes = [tuple(u.weight.shape) for u in projections]
        if len(shapes) == 1:
            return shapes[0][0] == 3 * shapes[0][1]
        return len(shapes) == 3 and all(rows == cols for rows, cols in shapes)

    def layer(self, index: int, hidden: str) -> str:
        """Match one encoder layer that reads ``hidden``; returns its output."""
        root = f"transformer.layer.{index}"
        projections = self.linear_by_input[self.graph.source(hidden)]
        dim = projections[0].weight.shape[1]
        if len(projections) == 1 and projections[0].weight.shape[0] == 3 * dim:
            self.assign(projections[0], f"{root}.attention.qkv")
        elif len(projections) == 3:
            for unit, part in zip(self._query_key_value(projections, index), "qkv"):
                self.assign(unit, f"{root}.attention.{part}_lin")
        else:
            self.fail(f"layer {index}: expected a fused QKV projection or three Q/K/V "
                      f"projections reading the hidden state, found {len(projections)}")
        self.first_projection = self.first_projection or projections[0]

        out_lin, sa_norm = self._residual(hidden, f"layer {index} attention")
        self.assign(out_lin, f"{root}.attention.out_lin")
        self.assign(sa_norm, f"{root}.sa_layer_norm")
        lin1 = self.linear_by_input.get(sa_norm.output, [])
        if len(lin1) != 1:
            self.fail(f"layer {index}: expected one FFN input linear, found {len(lin1)}")
        lin2, out_norm = self._residual(sa_norm.output, f"layer {index} FFN")
        self.assign(lin1[0], f"{root}.ffn.lin1")
        self.assign(lin2, f"{root}.ffn.lin2")
        self.assign(out_norm, f"{root}.output_layer_norm")
        self.hidden_dim = lin1[0].weight.shape[0]
        self.activation = self._activation(lin1[0], lin2, index)
        self.last_norm = out_norm
        return out_norm.output

    def _residual(self, hidden: str, where: str) -> tuple[Unit, Unit]:
        """The linear added back onto ``hidden`` and the LayerNorm of that sum."""
        for node, read in self.graph.readers(hidden):
            if node.op_type != "Add":
                continue
            norm = self.norm_by_input.get(self.graph.source(node.output[0]))
            other = node.input[1] if node.input[0] == read else node.input[0]
            linear = self.linear_by_output.get(self.graph.source(other))
            if norm is not None and linear is not None:
                return linear, norm
        self.fail(f"{where}: no residual Add of a linear output feeding a LayerNorm")

    def _query_key_value(self, projections: list[Unit], index: int) -> list[Unit]:
        """Order three projections as Q, K, V from where they enter the attention MatMuls."""
        reached = {id(u): self._attention_matmul(u.output) for u in projections}
        by_matmul: dict[int, list[tuple[int, Unit]]] = defaultdict(list)
        for unit in projections:
            if reached[id(unit)] is None:
                self.fail(f"layer {index}: a projection does not reach an attention MatMul")
            node, slot = reached[id(unit)]
            by_matmul[id(node)].append((slot, unit))
        groups = sorted(by_matmul.values(), key=len)
        if [len(g) for g in groups] != [1, 2] or groups[0][0][0] != 1:
            self.fail(f"layer {index}: cannot tell query, key and value apart")
        (q_slot, q), (k_slot, k) = sorted(groups[1], key=lambda item: item[0])
        if (q_slot, k_slot) != (0, 1):
            self.fail(f"layer {index}: query and key do not meet as MatMul(q, k^T)")
        return [q, k, groups[0][0][1]]

    def _attention_matmul(self, tensor: str):
        """The first MatMul (of two activations) reached from ``tensor`` through layout ops."""
        frontier, seen = [tensor], set()
        for _ in range(12):
            nxt = []
            for name in frontier:
                for node in self.graph.consumers.get(name, []):
                    if id(node) in seen:
                        continue
                    seen.add(id(node))
                    if node.op_type == "MatMul":
                        return node, list(node.input).index(name)
                    if node.op_type in _LAYOUT_OPS:
                        nxt.extend(node.output)
            frontier = nxt
        return None

    def _activation(self, lin1: Unit, lin2: Unit, index: int) -> str:
        """gelu or relu, from the ops between the FFN's two linears (walked backwards)."""
        ops, frontier = set(), [lin2.input]
        for _ in range(12):
            nxt = []
            for name in frontier:
                node = self.graph.producer.get(name)
                if name == lin1.output or node is None:
                    continue
                ops.add(node.op_type)
                nxt.extend(i for i in node.input if i and i not in self.graph.consts)
            frontier = nxt
        if "Erf" in ops or "Gelu" in ops:
            return "gelu"
        if "Relu" in ops:
            return "relu"
        self.fail(f"layer {index}: FFN activation is neither exact GELU (Erf) nor ReLU "
                  f"(ops seen: {', '.join(sorted(ops))})")


# ----------------------------------------------------------------------------------------
# Putting it together
# ----------------------------------------------------------------------------------------


def read_onnx_weights(
    path: str | Path, config: DistilBertConfig | str | Path | None = None
) -> OnnxWeights:
    """Read encoder weights (and leftover head units) from the ONNX file at ``path``.

    ``config`` is a :class:`DistilBertConfig`, a ``config.json`` path or folder, or None:
    then the config our exporter stores in the file's metadata, a ``config.json`` beside the
    file, or, failing both, one inferred from the graph (sizes, activation, eps, heads).
    """
    path = Path(path)
    model = load_model_proto(path)
    graph = _Graph(model, path)
    fused = sorted({n.op_type for n in graph.nodes if n.op_type in _FUSED_OPS})
    if fused:
        raise ValueError(
            f"{path} holds fused onnxruntime ops ({', '.join(fused)}); weights are read from "
            "unoptimised exports only: import the file you optimised instead"
        )

    linears, norms, tables = graph.linears(), graph.norms(), graph.tables()
    units = sorted(linears + norms + tables, key=lambda u: u.order)
    _name_hints(units)

    walk = _Walk(graph, linears, norms, tables)
    try:
        walk.run()
        walked = True
    except ValueError as err:
        walked = False
        logger.warning("structural match failed (%s); relying on tensor names alone", err)
    if walked:
        for unit in units:
            found = walk.assigned.get(id(unit))
            if found is None:
                continue
            if unit.name is not None and _bare(unit.name) != found:
                raise ValueError(
                    f"{path}: tensor {unit.named_by!r} is named for {unit.name} but sits "
                    f"where {found} belongs in the graph"
                )
            unit.name = found

    config = _resolve_config(config, model, path, walk if walked else None, units)
    encoder, head, head_units = {}, {}, []
    for unit in units:
        if unit.name is None:
            if not walked or unit.order > walk.last_norm.order:
                head_units.append(unit)
            continue
        if _is_encoder(unit.name):
            unit.name = _bare(unit.name)
            encoder.update(_unit_state(unit))
        else:
            head.update(_unit_state(unit))
    logger.debug("read %d encoder and %d head tensors from %s", len(encoder), len(head), path)
    return OnnxWeights(path, config, encoder, head, head_units)


def _unit_state(unit: Unit) -> dict[str, torch.Tensor]:
    state = {f"{unit.name}.weight": _tensor(unit.weight)}
    if unit.bias is not None:
        state[f"{unit.name}.bias"] = _tensor(unit.bias)
    return state


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))


def _resolve_config(config, model, path: Path, walk: _Walk | None, units) -> DistilBertConfig:
    """The config from the argument, the file's metadata, a config.json beside it, or the graph."""
    if isinstance(config, DistilBertConfig):
        return config
    if config is not None:
        return DistilBertConfig.from_pretrained(config)
    for prop in model.metadata_props:
        if prop.key == CONFIG_METADATA_KEY:
            try:
                return DistilBertConfig.from_dict(json.loads(prop.value))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: metadata {CONFIG_METADATA_KEY} is not JSON: {err}")
    beside = path.parent / "config.json"
    if beside.is_file():
        logger.info("using %s for the model config", beside)
        return DistilBertConfig.from_pretrained(beside)
    if walk is None:
        raise ValueError(
            f"{path}: no config in the file or beside it, and the graph could not be walked "
            "to infer one; pass config= (a DistilBertConfig or a config.json path)"
        )
    return _infer_config(model, path, walk, units)


def _infer_config(model, path: Path, walk: _Walk, units: list[Unit]) -> DistilBertConfig:
    """Sizes from the weights, heads from the attention reshape, eps from the LayerNorm."""
    named = {u.name: u for u in units if u.name}
    word = named["embeddings.word_embeddings"]
    token_type = named.get("embeddings.token_type_embeddings")
    eps = named["embeddings.LayerNorm"].eps
    raw = {
        "model_type": "bert" if token_type is not None else "distilbert",
        "vocab_size": int(word.weight.shape[0]),
        "dim": int(word.weight.shape[1]),
        "n_layers": walk.n_layers,
        "n_heads": _infer_heads(model, path, walk.first_projection, int(word.weight.shape[1])),
        "hidden_dim": int(walk.hidden_dim),
        "activation": walk.activation,
        "max_position_embeddings": int(named["embeddings.position_embeddings"].weight.shape[0]),
        "layer_norm_eps": float(f"{np.float32(eps):.6g}") if eps else 1e-12,
    }
    if token_type is not None:
        raw["type_vocab_size"] = int(token_type.weight.shape[0])
    logger.info("inferred the config of %s from its graph: %s", path, raw)
    return DistilBertConfig.from_dict(raw)


def _infer_heads(model, path: Path, projection: Unit, dim: int) -> int:
    """Head count from the shape the first projection is reshaped to (..., heads, head_dim)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        info.name: [d.dim_value if d.HasField("dim_value") else None
                    for d in info.type.tensor_type.shape.dim]
        for info in inferred.graph.value_info
    }
    for node in inferred.graph.node:
        if node.op_type == "Reshape" and node.input[0] == projection.output:
            shape = shapes.get(node.output[0]) or []
            if len(shape) >= 4 and shape[-1] and dim % shape[-1] == 0:
                return dim // shape[-1]
            if len(shape) >= 4 and shape[-2] and dim % shape[-2] == 0:
                return shape[-2]
    raise ValueError(
        f"{path}: cannot infer the number of attention heads from the graph; pass config= "
        "(a DistilBertConfig or a config.json path)"
    )


def head_state(weights: OnnxWeights, modules: list[tuple[str, str, tuple[int, ...]]]):
    """Head weights for ``modules`` ((name, kind, weight shape) in forward order).

    Names from the file win; modules left over take the unnamed head units in graph order,
    each checked for kind and shape.
    """
    state = dict(weights.head)
    wanted = [m for m in modules if f"{m[0]}.weight" not in state]
    free = list(weights.head_units)
    for name, kind, shape in wanted:
        if not free:
            break
        unit = free.pop(0)
        if unit.kind != kind or tuple(unit.weight.shape) != tuple(shape):
            raise ValueError(
                f"{weights.path}: head module {name} ({kind} {tuple(shape)}) would take a "
                f"{unit.kind} of shape {tuple(unit.weight.shape)}; the head does not match "
                "this file's task"
            )
        unit.name = name
        state.update(_unit_state(unit))
    return state
