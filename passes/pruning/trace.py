"""Channel tracing: walk the graph once, in topological order, giving channel labels to tensor
axes (see passes.pruning.atoms) and recording every edit pruning will need.

Rules, by op (axis numbers are the labelled axis of the tensor at hand):

- creators: Conv (output channels; depthwise passes its input's labels through, each input
  channel repeated `multiplier` times; grouped convs put an equal-removal constraint on their
  g blocks of input and output channels), Gemm and MatMul with a constant 2-D weight (output
  columns). Their weights are *read* along the input label (edit: slice the input dim).
- pass-through: unary element-wise ops, BatchNormalization/InstanceNormalization (per-channel
  parameters sliced), pools on axis 1, Softmax/LayerNorm/Reduce over *other* axes, Transpose,
  Squeeze/Unsqueeze, Slice/Gather/Pad/Tile that leave the axis alone.
- couplings: n-ary element-wise ops (Add, Mul, ... with broadcasting) unify the labels they
  pair; a constant operand that spans the axis is sliced; a run-time operand that spans it but
  carries no label pins it. Concat along the axis concatenates labels (untraced inputs get
  pinned atoms); Split slices them (its sizes are rewritten). A MatMul of two run-time tensors
  (attention) unifies its batch axes (heads) and pins the contracted and output feature axes
  (head_dim is kept whole).
- Reshape/Flatten/Expand: axes are matched by products of static dims (a symbolic dim only
  matches itself). A kept axis keeps its label, a merge gives tuples, a split makes composite
  atoms. Every shape entry that encodes a labelled size must be rewritable (a constant, or one
  piece of a Concat built shape) or the label is pinned, saying why.
- anything else that reads a labelled axis, graph outputs and control-flow subgraphs pin it.
"""

from __future__ import annotations

from compiler.ir import Graph, Node, Value, constant_value, is_constant
from passes.pruning.atoms import Edit, Label, Trace
from passes.pruning.atoms import axes_of as _axes
from passes.pruning.atoms import node_name as _name
from passes.pruning.atoms import rank as _rank
from passes.pruning.trace_layout import LayoutRules

__all__ = ["Edit", "Trace", "trace"]

_UNARY = {"Relu", "LeakyRelu", "PRelu_", "Sigmoid", "Tanh", "Erf", "Gelu", "HardSigmoid",
          "HardSwish", "Softplus", "Softsign", "Elu", "Selu", "Celu", "Mish", "Clip", "Identity",
          "Cast", "Dropout", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil",
          "Round", "Sin", "Cos", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink",
          "CastLike"}
_NARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
         "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
         "BitShift"}
_POOL = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool", "LpPool",
         "GlobalLpPool"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


class _Tracer(LayoutRules):
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.t = Trace()
        self.A = self.t.atoms

    # -- helpers ------------------------------------------------------------------------------
    def pin_all(self, v: Value | None, reason: str) -> None:
        for lab in self.t.of(v).values():
            self.A.pin_label(lab, reason)

    def pin_inputs(self, node: Node, reason: str | None = None) -> None:
        why = reason or f"{node.op_type} {_name(node)} reads the channels and is not traced"
        for v in node.inputs:
            self.pin_all(v, why)

    def fresh(self, node: Node, n: int, role: str = "out") -> Label:
        return self.A.new(n, f"{_name(node)}:{role}")

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> Trace:
        self.g.topological_sort()
        for node in self.g:
            if any(True for _ in node.subgraphs()):
                self.pin_inputs(node, f"{node.op_type} {_name(node)} has a subgraph")
                for sg in node.subgraphs():
                    for inner in sg.all_nodes():
                        self.pin_inputs(inner, f"used inside the subgraph of {_name(node)}")
                continue
            if node.domain not in ("", "ai.onnx"):
                self.pin_inputs(node)
                continue
            handler = getattr(self, "_" + node.op_type, None)
            if handler is None:
                if node.op_type in _UNARY:
                    handler = self._unary
                elif node.op_type in _NARY:
                    handler = self._nary
                elif node.op_type in _POOL:
                    handler = self._pool
                elif node.op_type in _REDUCE:
                    handler = self._reduce
            if handler is None:
                self.pin_inputs(node)
            else:
                handler(node)
        for v in self.g.outputs:
            self.pin_all(v, f"the channels reach the graph output {v.name!r}")
        return self.t

    # -- creators -----------------------------------------------------------------------------
    def _Conv(self, node: Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        wc = constant_value(w)
        labs = dict(self.t.of(x))
        if wc is None or wc.ndim < 3 or _rank(x) is None:
            return self.pin_inputs(node, f"Conv {_name(node)} has no constant weight")
        for ax in [a for a in labs if a != 1]:
            self.A.pin_label(labs.pop(ax), f"Conv {_name(node)} mixes spatial positions")
        o, cg = wc.shape[0], wc.shape[1]
        g = int(node.attr("group", 1))
        xin = labs.get(1)
        if g == 1:
            if xin is not None:
                self.t.edits.append(Edit("slice", node, 1, 1, xin, "in"))
            out = self.fresh(node, o)
        elif cg == 1 and o % g == 0:  # depthwise (with channel multiplier o // g)
            if xin is None:
                out = self.fresh(node, o)
                self.A.pin_label(out, f"depthwise Conv {_name(node)} reads an untraced tensor")
            else:
                m = o // g
                out = [xin[k // m] for k in range(o)]
                self.t.edits.append(Edit("conv_group", node, 1, 0, xin))
        else:
            if xin is not None:
                self._blocks(xin, g, node)
                self.t.edits.append(Edit("grouped_in", node, 1, 1, xin, "in", groups=g))
            out = self.fresh(node, o)
            self._blocks(out, g, node)
        self.t.edits.append(Edit("slice", node, 1, 0, out, "out"))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            self.t.edits.append(Edit("slice", node, 2, 0, out, "param"))
        self.t.put(node.outputs[0], 1, out)

    def _blocks(self, lab: Label, g: int, node: Node) -> None:
        if any(len(t) != 1 for t in lab) or len(lab) % g:
            self.A.pin_label(lab, f"grouped Conv {_name(node)}: channels not traceable per group")
            return
        n = len(lab) // g
        self.A.blocks.append([[lab[k * n + i][0] for i in range(n)] for k in range(g)])

    def _Gemm(self, node: Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        bc = constant_value(b)
        if bc is None or bc.ndim != 2:
            return self.pin_inputs(node, f"Gemm {_name(node)} has no constant weight")
        ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
        labs = dict(self.t.of(a))
        k_axis = 0 if ta else 1
        for ax in [x for x in labs if x != k_axis]:
            self.A.pin_label(labs.pop(ax), f"Gemm {_name(node)} reads channels as rows")
        if k_axis in labs:
            self.t.edits.append(Edit("slice", node, 1, 1 if tb else 0, labs[k_axis], "in"))
        n = bc.shape[0] if tb else bc.shape[1]
        out = self.fresh(node, n)
        self.t.edits.append(Edit("slice", node, 1, 0 if tb else 1, out, "out"))
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None:
            cc = constant_value(c)
            if cc is None:
                self.A.pin_label(out, f"Gemm {_name(node)} adds a run-time C")
            elif cc.ndim and cc.shape[-1] == n and n > 1:
                self.t.edits.append(Edit("slice", node, 2, cc.ndim - 1, out, "param"))
        self.t.put(node.outputs[0], 1, out)

    def _MatMul(self, node: Node) -> None:
        a, b = node.inputs
        ra, rb, ro = _rank(a), _rank(b), _rank(node.outputs[0])
        if ra is None or rb is None or ro is None or ra < 2 or rb < 2:
            return self.pin_inputs(node, f"MatMul {_name(node)} has unknown ranks")
        bc = constant_value(b) if is_constant(b) else None
        if bc is not None and bc.ndim == 2:
            labs = dict(self.t.of(a))
            if ra - 1 in labs:
                self.t.edits.append(Edit("slice", node, 1, 0, labs.pop(ra - 1), "in"))
            for ax, lab in labs.items():  # rows and batch axes pass through
                self.t.put(node.outputs[0], ax + ro - ra, lab)
            out = self.fresh(node, bc.shape[1])
            self.t.edits.append(Edit("slice", node, 1, 1, out, "out"))
            self.t.put(node.outputs[0], ro - 1, out)
            return
        if is_constant(a) or is_constant(b):
            return self.pin_inputs(node, f"MatMul {_name(node)} has a batched constant")
        self._attention_matmul(node, a, b, ra, rb, ro)

    def _attention_matmul(self, node: Node, a: Value, b: Value, ra: int, rb: int,
                          ro: int) -> None:
        la, lb = self.t.of(a), self.t.of(b)
        why = f"MatMul {_name(node)} contracts it (head_dim is kept whole)"
        self.A.pin_label(la.get(ra - 1), why)
        self.A.pin_label(lb.get(rb - 2), why)
        if rb - 1 in lb:
            self.A.pin_label(lb[rb - 1], f"MatMul {_name(node)} output features (head_dim)")
            self.t.put(node.outputs[0], ro - 1, lb[rb - 1])
        if ra - 2 in la:
            self.t.put(node.outputs[0], ro - 2, la[ra - 2])
        sa, sb = a.shape, b.shape
        for k in range(3, ro + 1):  # batch axes, aligned from the right
            xa, xb = ra - k, rb - k
            pa = la.get(xa) if xa >= 0 else None
            pb = lb.get(xb) if xb >= 0 else None
            da = sa[xa] if xa >= 0 else 1
            db = sb[xb] if xb >= 0 else 1
            if pa is not None and pb is not None:
                self.A.unify(pa, pb, f"MatMul {_name(node)} pairs unequal batch axes")
            lab = pa if pa is not None else pb
            if lab is None:
                continue
            other = db if pa is not None else da
            if other != 1 and (pa is None or pb is None):
                self.A.pin_label(lab, f"MatMul {_name(node)} pairs heads with an untraced "
                                 "tensor")
            self.t.put(node.outputs[0], ro - k, lab)

    # -- pass-through -------------------------------------------------------------------------
    def _unary(self, node: Node) -> None:
        for ax, lab in self.t.of(node.inputs[0]).items():
            self.t.put(node.outputs[0], ax, lab)

    def _BatchNormalization(self, node: Node) -> None:
        labs = self.t.of(node.inputs[0])
        self._unary(node)
        if 1 in labs:
            for i in range(1, 5):
                self.t.edits.append(Edit("slice", node, i, 0, labs[1], "param"))

    def _InstanceNormalization(self, node: Node) -> None:
        labs = dict(self.t.of(node.inputs[0]))
        for ax in [a for a in labs if a != 1]:
            self.A.pin_label(labs.pop(ax), f"{node.op_type} {_name(node)} normalizes over it")
        if 1 in labs:
            self.t.put(node.outputs[0], 1, labs[1])
            for i in (1, 2):
                self.t.edits.append(Edit("slice", node, i, 0, labs[1], "param"))

    def _LayerNormalization(self, node: Node) -> None:
        r = _rank(node.inputs[0])
        if r is None:
            return self.pin_inputs(node)
        k = int(node.attr("axis", -1)) % r
        for ax, lab in self.t.of(node.inputs[0]).items():
            if ax >= k:
                self.A.pin_label(lab, f"LayerNormalization {_name(node)} normalizes over it")
            else:
                self.t.put(node.outputs[0], ax, lab)

    def _softmax(self, node: Node) -> None:
        r = _rank(node.inputs[0])
        if r is None:
            return self.pin_inputs(node)
        k = int(node.attr("axis", -1)) % r
        for ax, lab in self.t.of(node.inputs[0]).items():
            if ax == k:
                self.A.pin_label(lab, f"{node.op_type} {_name(node)} normalizes over it")
            else:
                self.t.put(node.outputs[0], ax, lab)

    _Softmax = _LogSoftmax = _Hardmax = _softmax

    def _pool(self, node: Node) -> None:
        for ax, lab in self.t.of(node.inputs[0]).items():
            if ax <= 1:
                self.t.put(node.outputs[0], ax, lab)
            else:
                self.A.pin_label(lab, f"{node.op_type} {_name(node)} pools over it")

    def _reduce(self, node: Node) -> None:
        r = _rank(node.inputs[0])
        labs = self.t.of(node.inputs[0])
        if not labs:
            return
        if r is None:
            return self.pin_inputs(node)
        axes = _axes(node, r, default=list(range(r)))
        if axes is None or (not axes and not node.attr("noop_with_empty_axes", 0)):
            axes = list(range(r)) if axes is not None else None
        if axes is None:
            return self.pin_inputs(node, f"{node.op_type} {_name(node)} has run-time axes")
        keep = int(node.attr("keepdims", 1))
        for ax, lab in labs.items():
            if ax in axes:
                self.A.pin_label(lab, f"{node.op_type} {_name(node)} reduces over it")
            else:
                self.t.put(node.outputs[0], ax if keep else ax - sum(a < ax for a in axes), lab)

    # -- couplings ----------------------------------------------------------------------------
    def _nary(self, node: Node) -> None:
        out = node.outputs[0]
        ro = _rank(out)
        ins = [v for v in node.inputs]
        if ro is None:
            return self.pin_inputs(node)
        for ax in range(ro):
            found: list[Label] = []
            for v in ins:
                if v is None or _rank(v) is None:
                    continue
                lab = self.t.of(v).get(ax - (ro - _rank(v)))
                if lab is not None and ax - (ro - _rank(v)) >= 0:
                    found.append(lab)
            if not found:
                continue
            base = found[0]
            for other in found[1:]:
                self.A.unify(base, other, f"{node.op_type} {_name(node)} pairs unequal labels")
            for i, v in enumerate(ins):
                if v is None or _rank(v) is None:
                    continue
                vax = ax - (ro - _rank(v))
                if vax < 0 or vax in self.t.of(v):
                    continue
                d = v.shape[vax]
                if d == 1:
                    continue
                if is_constant(v) and d == len(base):
                    self.t.edits.append(Edit("slice", node, i, vax, base, "param"))
                else:
                    self.A.pin_label(base, f"{node.op_type} {_name(node)} combines the channels "
                                     "with a tensor they cannot be traced into")
            self.t.put(out, ax, base)


def trace(graph: Graph) -> Trace:
    """Labels, couplings, pins and edits for `graph` (shapes must be inferred first)."""
    return _Tracer(graph).run()
