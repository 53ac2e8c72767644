"""Channel tracing, layout rules: ops that move, cut or re-shape a labelled tensor axis.

Transpose/Squeeze/Unsqueeze map the axis; Slice, Gather, Pad and Tile pass it through when they
leave it alone and pin it otherwise (they name fixed positions). Concat along the axis
concatenates labels (an untraced input's positions get pinned atoms), along another axis
unifies them; Split slices them, and its sizes are rewritten. Reshape/Flatten/Expand match axes
by products of static dims (a symbolic dim only matches itself): a kept axis keeps its label, a
merge gives each position the tuple of its digits' atoms, a split makes every atom of the axis
composite of one fresh factor atom per new axis (heads and head_dim of a fused projection).
Every shape entry that spells a labelled size must be rewritable - a constant, or one piece of a
Concat-built shape - or the label is pinned, with the reason.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Node, Value, is_constant
from passes.pruning.atoms import Atoms, Edit, Label, Trace
from passes.pruning.atoms import axes_of as _axes
from passes.pruning.atoms import int_list as _int_list
from passes.pruning.atoms import node_name as _name
from passes.pruning.atoms import rank as _rank

__all__ = ["LayoutRules", "align", "merge_labels"]


class LayoutRules:
    """Rules for layout ops; mixed into the tracer, which provides `t`, `A`, `fresh`, `pin_all`
    and `pin_inputs`."""

    t: Trace
    A: Atoms

    def _Transpose(self, node: Node) -> None:
        r = _rank(node.inputs[0])
        labs = self.t.of(node.inputs[0])
        if not labs:
            return
        perm = node.attr("perm") or list(reversed(range(r or 0)))
        for ax, lab in labs.items():
            self.t.put(node.outputs[0], list(perm).index(ax), lab)

    def _Unsqueeze(self, node: Node) -> None:
        labs = self.t.of(node.inputs[0])
        ro = _rank(node.outputs[0])
        if not labs:
            return
        axes = _axes(node, ro) if ro is not None else None
        if axes is None:
            return self.pin_inputs(node)
        keep = [i for i in range(ro) if i not in axes]
        for ax, lab in labs.items():
            self.t.put(node.outputs[0], keep[ax], lab)

    def _Squeeze(self, node: Node) -> None:
        labs = self.t.of(node.inputs[0])
        r = _rank(node.inputs[0])
        if not labs:
            return
        shape = node.inputs[0].shape
        axes = _axes(node, r, default=[i for i, d in enumerate(shape or ()) if d == 1]) \
            if r is not None else None
        if axes is None:
            return self.pin_inputs(node)
        for ax, lab in labs.items():
            if ax in axes:
                self.A.pin_label(lab, f"Squeeze {_name(node)} removes it")
            else:
                self.t.put(node.outputs[0], ax - sum(a < ax for a in axes), lab)

    def _Slice(self, node: Node) -> None:
        labs = self.t.of(node.inputs[0])
        r = _rank(node.inputs[0])
        if not labs:
            return
        axes = _int_list(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else \
            list(range(len(_int_list(node.inputs[1]) or [])))
        if axes is None or r is None:
            return self.pin_inputs(node)
        self._same_axes_but(node, labs, {a % r for a in axes}, f"Slice {_name(node)} cuts it")

    def _Gather(self, node: Node) -> None:
        labs = self.t.of(node.inputs[0])
        self.pin_all(node.inputs[1], f"Gather {_name(node)} uses channels as indices")
        r = _rank(node.inputs[0])
        if not labs:
            return
        idx_rank = _rank(node.inputs[1])
        if r is None or idx_rank is None:
            return self.pin_inputs(node)
        k = int(node.attr("axis", 0)) % r
        for ax, lab in labs.items():
            if ax == k:
                self.A.pin_label(lab, f"Gather {_name(node)} picks fixed positions of it")
            else:
                self.t.put(node.outputs[0], ax if ax < k else ax + idx_rank - 1, lab)

    def _Pad(self, node: Node) -> None:
        labs = self.t.of(node.inputs[0])
        r = _rank(node.inputs[0])
        if not labs:
            return
        pads = node.attr("pads") or (_int_list(node.inputs[1]) if len(node.inputs) > 1 else None)
        axes = _int_list(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        if pads is None or r is None:
            return self.pin_inputs(node)
        axes = [a % r for a in axes] if axes else list(range(r))
        n = len(axes)
        padded = {a for i, a in enumerate(axes) if pads[i] or pads[i + n]}
        self._same_axes_but(node, labs, padded, f"Pad {_name(node)} pads it")

    def _same_axes_but(self, node: Node, labs: dict, changed: set, why: str) -> None:
        """The output keeps the input's labelled axes, except those `node` changes: pinned."""
        for ax, lab in labs.items():
            if ax in changed:
                self.A.pin_label(lab, why)
            else:
                self.t.put(node.outputs[0], ax, lab)

    def _Tile(self, node: Node) -> None:
        labs = self.t.of(node.inputs[0])
        reps = _int_list(node.inputs[1])
        for ax, lab in labs.items():
            if reps is None or reps[ax] != 1:
                self.A.pin_label(lab, f"Tile {_name(node)} repeats it")
            else:
                self.t.put(node.outputs[0], ax, lab)

    def _Shape(self, node: Node) -> None:  # reads sizes only: they follow the pruned graph
        return

    _Size = _Shape

    def _Concat(self, node: Node) -> None:
        out = node.outputs[0]
        ro = _rank(out)
        if ro is None:
            return self.pin_inputs(node)
        k = int(node.attr("axis", 0)) % ro
        labelled = {ax for v in node.inputs for ax in self.t.of(v)}
        for ax in labelled:
            if ax != k:
                labs = [self.t.of(v).get(ax) for v in node.inputs]
                base = next(lab for lab in labs if lab is not None)
                for lab in labs:
                    if lab is None:
                        self.A.pin_label(base, f"Concat {_name(node)} joins it with an "
                                         "untraced tensor")
                    elif lab is not base:
                        self.A.unify(base, lab, f"Concat {_name(node)} pairs unequal labels")
                self.t.put(out, ax, base)
        if k not in labelled:
            return
        merged: Label = []
        for v in node.inputs:
            lab = self.t.of(v).get(k)
            if lab is None:
                d = v.shape[k] if v.shape is not None else None
                if not isinstance(d, int):
                    merged = []
                    break
                lab = self.fresh(node, d, "untraced")
                self.A.pin_label(lab, f"Concat {_name(node)}: part of it is not traced")
            merged.extend(lab)
        if not merged:
            return self.pin_inputs(node, f"Concat {_name(node)} joins inputs of unknown size")
        self.t.put(out, k, merged)

    def _Split(self, node: Node) -> None:
        x = node.inputs[0]
        labs = self.t.of(x)
        r = _rank(x)
        if not labs:
            return
        if r is None:
            return self.pin_inputs(node)
        k = int(node.attr("axis", 0)) % r
        for ax, lab in labs.items():
            if ax != k:
                for o in node.outputs:
                    self.t.put(o, ax, lab)
                continue
            sizes = node.attr("split") or (_int_list(node.inputs[1])
                                           if len(node.inputs) > 1 and node.inputs[1] else None)
            n = len(node.outputs)
            if sizes is None and (len(node.inputs) < 2 or node.inputs[1] is None):
                sizes = [-(-len(lab) // n)] * (n - 1)
                sizes.append(len(lab) - sum(sizes))
            if sizes is None:
                self.A.pin_label(lab, f"Split {_name(node)} has run-time sizes")
                continue
            self.t.edits.append(Edit("split", node, 1, k, lab))
            start = 0
            for o, s in zip(node.outputs, sizes):
                self.t.put(o, k, lab[start:start + s])
                start += s

    # -- shape rewriting ----------------------------------------------------------------------
    def _entry(self, node: Node, index: int, entry: int) -> tuple[bool, str | None]:
        """(needs an edit, why it cannot be rewritten) for entry `entry` of a shape input."""
        sv = node.inputs[index]
        c = _int_list(sv)
        if c is not None:
            return c[entry] != -1, None
        p = sv.producer if sv is not None else None
        if p is not None and p.op_type == "Concat" and not p.domain:
            pos = 0
            for piece in p.inputs:
                n = piece.static_shape() if piece is not None else None
                if n is None or len(n) != 1:
                    break
                if pos <= entry < pos + n[0]:
                    if is_constant(piece) or n[0] == 1:
                        return True, None
                    break
                pos += n[0]
        return True, f"{node.op_type} {_name(node)} computes the size at run time"

    def _shape_edit(self, node: Node, index: int, entry: int, lab: Label) -> bool:
        need, why = self._entry(node, index, entry)
        if why is not None:
            self.A.pin_label(lab, why)
            return False
        if need:
            self.t.edits.append(Edit("shape_entry", node, index, entry, lab))
        return True

    def _Reshape(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        labs = self.t.of(x)
        if not labs:
            return
        if x.shape is None or out.shape is None:
            return self.pin_inputs(node, f"Reshape {_name(node)} has unknown shapes")
        blocks = align(list(x.shape), list(out.shape))
        if blocks is None:
            return self.pin_inputs(node, f"Reshape {_name(node)} mixes axes")
        self._regroup(node, x, out, blocks, shape_input=1)

    def _Flatten(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        labs = self.t.of(x)
        r = _rank(x)
        if not labs:
            return
        if r is None:
            return self.pin_inputs(node)
        k = int(node.attr("axis", 1)) % (r + 1) if r else 0
        blocks = [(list(range(k)), [0]), (list(range(k, r)), [1])]
        self._regroup(node, x, out, blocks, shape_input=None)

    def _regroup(self, node: Node, x: Value, out: Value, blocks, shape_input: int | None):
        labs = self.t.of(x)
        for ins, outs in blocks:
            present = [labs.get(i) for i in ins]
            if all(p is None for p in present):
                continue
            sizes = [x.shape[i] for i in ins]
            osz = [out.shape[j] for j in outs] if out.shape is not None else []
            if len(outs) == 1 and all(isinstance(s, int) for s in sizes):
                lab = present[0] if len(ins) == 1 else merge_labels(sizes, present)
                ok = shape_input is None or self._shape_edit(node, shape_input, outs[0], lab)
                if ok:
                    self.t.put(out, outs[0], lab)
            elif len(ins) == 1 and len(outs) > 1 and all(isinstance(s, int) for s in osz):
                self._split_axis(node, out, outs, osz, present[0], shape_input)
            else:
                for p in present:
                    self.A.pin_label(p, f"{node.op_type} {_name(node)} reshapes it into "
                                     "several axes")

    def _split_axis(self, node: Node, out: Value, outs: list[int], osz: list[int], lab: Label,
                    shape_input: int | None) -> None:
        atoms = [t[0] for t in lab]
        if any(len(t) != 1 for t in lab) or len(set(atoms)) != len(atoms):
            self.A.pin_label(lab, f"{node.op_type} {_name(node)} splits a repeated channel axis")
            return
        factors = [self.fresh(node, s, f"axis{j}") for j, s in zip(outs, osz)]
        for p, a in enumerate(atoms):
            digits = np.unravel_index(p, osz)
            self.A.composite[a] = tuple(f[d][0] for f, d in zip(factors, digits))
        for j, f in zip(outs, factors):
            ok = shape_input is None or self._shape_edit(node, shape_input, j, f)
            if ok:
                self.t.put(out, j, f)
            else:
                self.A.pin_label(f, "its shape entry cannot be rewritten")

    def _Expand(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        labs = self.t.of(x)
        r, ro = _rank(x), _rank(out)
        if not labs:
            return
        if r is None or ro is None:
            return self.pin_inputs(node)
        shape = _int_list(node.inputs[1])
        n = node.inputs[1].static_shape()
        if n is None or len(n) != 1:
            return self.pin_inputs(node, f"Expand {_name(node)} has a shape of unknown length")
        for ax, lab in labs.items():
            oax = ax + ro - r
            entry = oax - (ro - n[0])
            if entry < 0 or (shape is not None and shape[entry] == 1):
                self.t.put(out, oax, lab)
            elif self._shape_edit(node, 1, entry, lab):
                self.t.put(out, oax, lab)


def align(ins: list, outs: list) -> list[tuple[list[int], list[int]]] | None:
    """Match the axes of a reshape: blocks (input axes, output axes) with equal products. Size-1
    axes form blocks of their own; a symbolic dim only matches the same symbol."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        if i < len(ins) and ins[i] == 1:
            blocks.append(([i], []))
            i += 1
            continue
        if j < len(outs) and outs[j] == 1:
            blocks.append(([], [j]))
            j += 1
            continue
        if i >= len(ins) or j >= len(outs):
            return None
        a, b = ins[i], outs[j]
        if not isinstance(a, int) or not isinstance(b, int):
            if a is None or a != b:
                return None
            blocks.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        bi, bj, pi, pj = [i], [j], a, b
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(ins) or not isinstance(ins[i], int):
                    return None
                pi *= ins[i]
                bi.append(i)
                i += 1
            else:
                if j >= len(outs) or not isinstance(outs[j], int):
                    return None
                pj *= outs[j]
                bj.append(j)
                j += 1
        blocks.append((bi, bj))
    return blocks


def merge_labels(sizes: list[int], labels: list[Label | None]) -> Label:
    """The label of axes merged row-major: each position's tuple joins its digits' tuples."""
    out: Label = [()]
    for s, lab in zip(sizes, labels):
        out = [t + (lab[k] if lab is not None else ()) for t in out for k in range(s)]
    return out
