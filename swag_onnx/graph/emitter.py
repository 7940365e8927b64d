"""Building blocks for the backward graph: a read-only view of forward nodes, and an emitter that
adds new nodes and constants with fresh names and knows the forward tensors' static shapes.

Shapes are tuples with None for dimensions that are not static (usually the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

NCHWC_BLOCK = 8  # onnxruntime's channel block on AVX2 CPUs (16 with AVX-512)

Shape = tuple  # of int | None


@dataclass(frozen=True)
class Node:
    """A forward node with its attributes resolved against the op schema (defaults filled in)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(hash=False)
    domain: str = ""

    @staticmethod
    def from_proto(node: onnx.NodeProto, opset: int) -> "Node":
        attrs: dict[str, Any] = {}
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
            for name, attr in schema.attributes.items():
                if attr.default_value.type != onnx.AttributeProto.UNDEFINED:
                    attrs[name] = helper.get_attribute_value(attr.default_value)
        except onnx.defs.SchemaError:
            pass
        for attr in node.attribute:
            attrs[attr.name] = helper.get_attribute_value(attr)
        for key, value in attrs.items():
            if isinstance(value, bytes):
                attrs[key] = value.decode()
        domain = "" if node.domain == "ai.onnx" else node.domain
        return Node(node.op_type, node.name or node.output[0], tuple(node.input),
                    tuple(node.output), attrs, domain)

    def input(self, i: int) -> str:
        """Name of input i, or '' when it is absent (optional inputs)."""
        return self.inputs[i] if i < len(self.inputs) else ""


def wiring(nodes: list[Node]) -> tuple[dict[str, int], dict[str, Node]]:
    """(tensor -> number of node inputs reading it, tensor -> the node producing it)."""
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    return readers, {o: node for node in nodes for o in node.outputs}


class Emitter:
    """Collects the nodes and initializers of the backward graph.

    `op` adds one node and returns its output name(s); `const` adds (and caches) a constant.
    Static facts about forward tensors come from shape inference (`shape`, `dtype`, `value`).
    """

    def __init__(self, model: onnx.ModelProto, taken_names: set[str]):
        self.opset = _default_opset(model)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = taken_names
        self._counter = 0
        self._const_cache: dict[tuple, str] = {}
        self.unexpanded: set[str] = set()  # gradient terms to broadcast where they are summed
        self._conv_outputs: set[str] = set()  # outputs of the Convs emitted here
        # Relu outputs whose mask the MaxPool or Concat reading them applies to its dY instead,
        # and those nodes' outputs (see activations.relu_mask_carriers)
        self.relu_masks_moved: set[str] = set()
        self.relu_mask_carriers: set[str] = set()
        # forward tensors [N, K, ...] whose gradient is zero outside the classes (axis 1) that
        # the seed selects, and the effective seed [N, K] (see augment._class_maps)
        self.class_maps: set[str] = set()
        self.seed: str | None = None
        self._seed_classes: str | None = None
        self._shapes: dict[str, Shape] = {}
        self._dim_names: dict[str, tuple[str | None, ...]] = {}  # symbolic dims ("N"), by axis
        self._dtypes: dict[str, int] = {}
        self._values: dict[str, np.ndarray] = {}
        self._constants: dict[str, onnx.TensorProto] = {}
        self._aliases: dict[str, str] = {}  # Identity output -> the initializer it copies
        self.parameters: set[str] = set()  # initializers that become overridable inputs
        self._read_types(model)

    # ----- facts about forward tensors -------------------------------------------------------
    def _read_types(self, model: onnx.ModelProto) -> None:
        g = model.graph
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            t = vi.type.tensor_type
            if not t.HasField("elem_type"):
                continue
            self._dtypes[vi.name] = t.elem_type
            if t.HasField("shape"):
                self._shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
                )
                self._dim_names[vi.name] = tuple(d.dim_param or None for d in t.shape.dim)
        for init in g.initializer:
            self._dtypes[init.name] = init.data_type
            self._shapes[init.name] = tuple(init.dims)
            self._constants[init.name] = init
        for node in g.node:
            tensor = None
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensor = node.attribute[0].t
            elif node.op_type == "Identity" and node.input[0] in self._constants:
                tensor = self._constants[node.input[0]]  # torch shares equal weights so
                self._aliases[node.output[0]] = self._aliases.get(node.input[0], node.input[0])
            if tensor is not None:
                self._constants[node.output[0]] = tensor
                self._dtypes[node.output[0]] = tensor.data_type
                self._shapes[node.output[0]] = tuple(tensor.dims)

    def shape(self, name: str) -> Shape | None:
        """Static shape of a tensor (None dims where unknown), or None if even the rank is unknown."""
        return self._shapes.get(name)

    def dims(self, name: str) -> list[int | str] | None:
        """Shape of a forward tensor with its symbolic dims by name ("N"; `<name>_dim<axis>`
        where shape inference left a dim unnamed), or None if the rank is unknown."""
        shape = self.shape(name)
        if shape is None:
            return None
        names = self._dim_names.get(name, (None,) * len(shape))
        return [d if d is not None else names[i] or f"{name}_dim{i}" for i, d in enumerate(shape)]

    def rank(self, name: str) -> int:
        shape = self.shape(name)
        if shape is None:
            raise ValueError(f"rank of tensor {name!r} is unknown after shape inference")
        return len(shape)

    def dtype(self, name: str) -> int | None:
        return self._dtypes.get(name)

    def value(self, name: str) -> np.ndarray | None:
        """Value of a constant tensor (initializer, Constant node, or an Identity of one), else
        None; None also for parameters (and their Identity copies) that a run may override."""
        if name in self.parameters or self._aliases.get(name) in self.parameters:
            return None
        if name not in self._values:
            if name not in self._constants:
                return None
            self._values[name] = numpy_helper.to_array(self._constants[name])
        return self._values[name]

    # ----- emitting ---------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"swag/{hint}/{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs: Any):
        """Add one node; returns its output name (or a list when n_out > 1)."""
        outputs = [self.fresh(op_type) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                           name=self.fresh(op_type + "_node"), **attrs))
        if op_type == "Conv":
            self._conv_outputs.add(outputs[0])
        return outputs[0] if n_out == 1 else outputs

    def const(self, value, dtype=np.float32) -> str:
        """A constant tensor (cached: the same value is emitted once)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def ints(self, values) -> str:
        """A 1-D int64 constant (axes, shapes, pads, ...)."""
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64)

    def np_dtype(self, like: str):
        """The NumPy element type of forward tensor `like` (float32 when unknown)."""
        return helper.tensor_dtype_to_np_dtype(self.dtype(like) or onnx.TensorProto.FLOAT)

    def const_like(self, value, like: str) -> str:
        """A constant with the element type of forward tensor `like`: a float16 model's backward
        graph computes in float16 (onnxruntime binds both operands of an op to one type)."""
        return self.const(value, self.np_dtype(like))

    def scalar_like(self, value: float, like: str) -> str:
        """A scalar constant with the element type of tensor `like`."""
        return self.const_like(value, like)

    # ----- small recurring patterns -----------------------------------------------------------
    def reduce_sum(self, x: str, axes, keepdims: bool) -> str:
        if not len(axes):
            return x
        return self.op("ReduceSum", x, self.ints(axes), keepdims=int(keepdims))

    def batch_only(self, name: str) -> bool:
        """True when every dim of `name` is static but (possibly) the first, the batch."""
        shape = self.shape(name)
        return shape is not None and all(d is not None for d in shape[1:])

    def shape_of(self, like: str, batch: int) -> str:
        """The int64 shape of `like`: a constant (the batch dim written as `batch`: -1 for
        Reshape, 1 for Expand) when only the batch is dynamic, else a Shape node. Constants
        spare onnxruntime a node per use: Shape of a dynamic-batch tensor is never folded."""
        if self.batch_only(like):
            shape = self.shape(like)
            return self.ints([batch if shape[0] is None else shape[0]] + list(shape[1:]))
        return self.op("Shape", like)

    def reshape_like(self, x: str, like: str, same_batch: bool = False) -> str:
        """Reshape x to the shape of `like`. `same_batch`: x's dim 0 is `like`'s dynamic batch,
        written as 0 (copy) rather than -1, so that onnxruntime's shape inference keeps the
        batch's symbolic name: only tensors it can prove equal in shape stay in its blocked
        NCHWc layout together (element-wise Mul and Sum of backward and forward maps)."""
        return self.op("Reshape", x, self.shape_of(like, 0 if same_batch else -1))

    def same_batch(self, a: str, b: str) -> bool:
        """True when a and b [N, ...] share a dynamic batch dim 0 and static other dims of
        equal product (reshapes of each other that keep the batch)."""
        if not (self.batch_only(a) and self.batch_only(b)):
            return False
        sa, sb = self.shape(a), self.shape(b)
        return (len(sa) > 0 < len(sb) and sa[0] is None and sb[0] is None
                and int(np.prod(sa[1:])) == int(np.prod(sb[1:])))

    def expand_like(self, x: str, like: str) -> str:
        """Broadcast x (which already has the batch dim) to the shape of `like`."""
        return self.op("Expand", x, self.shape_of(like, 1))

    def expand_when_summed(self, x: str) -> str:
        """x, an input gradient of the input's rank and batch that is constant along some axes
        (size 1 there, e.g. [N, C, 1, 1] for a pooled map), left unexpanded: the driver adds an
        input's gradient terms with one Sum, which broadcasts, and expands x only when no
        full-size term joins it. A squeeze-excitation input (pooled, and scaled by a Mul whose
        term is full-size) then never writes and re-reads its pool's expanded gradient."""
        self.unexpanded.add(x)
        return x

    def seed_classes(self) -> str:
        """int64 [k]: the classes whose seed is nonzero in some row (emitted once)."""
        if self._seed_classes is None:
            used = self.reduce_sum(self.op("Abs", self.seed), [0], keepdims=False)  # [K]
            used = self.op("Cast", used, to=onnx.TensorProto.BOOL)  # NonZero has no double kernel
            self._seed_classes = self.op("Reshape", self.op("NonZero", used), self.ints([-1]))
        return self._seed_classes

    def zeros_like(self, like: str) -> str:
        zero = numpy_helper.from_array(
            np.zeros(1, helper.tensor_dtype_to_np_dtype(self.dtype(like) or 1)), "value")
        return self.op("ConstantOfShape", self.op("Shape", like), value=zero)

    def blocked(self, y: str) -> bool:
        """Whether y [N, C, H, W] is a float32 map that onnxruntime's CPU provider can keep in
        its blocked channel layout (NCHWc), where its convolutions run."""
        shape = self.shape(y)
        return (self.dtype(y) == onnx.TensorProto.FLOAT and shape is not None and len(shape) == 4
                and shape[1] is not None and shape[1] % NCHWC_BLOCK == 0)

    def mask(self, condition: str, like: str) -> str:
        """Cast a boolean tensor to the element type of `like` (1.0 / 0.0)."""
        return self.op("Cast", condition, to=self.dtype(like) or onnx.TensorProto.FLOAT)

    def unbroadcast(self, grad: str, operand: str, output: str) -> str:
        """Sum `grad` (shaped like `output`) down to the shape of a broadcast `operand`."""
        out_shape, in_shape = self.shape(output), self.shape(operand)
        if out_shape is None or in_shape is None:
            raise ValueError(f"cannot un-broadcast to {operand!r}: its shape is unknown")
        lead = len(out_shape) - len(in_shape)
        stretched = [lead + i for i, d in enumerate(in_shape)
                     if d == 1 and out_shape[lead + i] != 1]
        if (lead == 0 and stretched == [2, 3] and self.blocked(output)
                and None not in out_shape[2:]):
            # the sum over a blocked map's H, W (a squeeze-excitation scale's gradient) as
            # GlobalAveragePool * HW, which onnxruntime runs blocked; ReduceSum would first
            # convert the map back (EfficientNet-B0: 0.37 ms of layout conversions)
            area = self.scalar_like(float(out_shape[2] * out_shape[3]), output)
            return self.op("Mul", self.op("GlobalAveragePool", grad), area)
        grad = self.reduce_sum(grad, stretched, keepdims=True)
        grad = self.reduce_sum(grad, list(range(lead)), keepdims=False)
        return grad

    def add_all(self, terms: list[str], like: str) -> str:
        """The sum of the gradient terms of forward tensor `like`. On a blocked map the Conv
        terms are added first, two at a time: onnxruntime folds each such Add into one of its
        convolutions (which accumulates into the other term), and converts only their sum back
        for the other terms (GoogLeNet's inception inputs: three Conv terms and a MaxPool's;
        a Sum of all four converted the three back and ran unblocked)."""
        convs = [t for t in terms if t in self._conv_outputs] if self.blocked(like) else []
        if len(convs) < 2:
            return terms[0] if len(terms) == 1 else self.op("Sum", *terms)
        total = convs[0]
        for term in convs[1:]:
            total = self.op("Sum", total, term)
        rest = [t for t in terms if t not in convs]
        return self.op("Sum", total, *rest) if rest else total


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("model imports no default-domain opset")
