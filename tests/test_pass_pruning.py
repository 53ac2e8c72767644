"""Structured pruning: dependency groups on hand-built graphs (the failure cases Torch-Pruning
users report), checked for structure (what was cut, which sizes were rewritten) and numerics:
removing units whose weights are all zero must leave the outputs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler.ir import constant_value
from passes.pruning.apply import apply_plan
from passes.pruning.groups import analyze
from passes.pruning.importance import scores
from passes.shape_inference import infer_shapes
from tests.helpers import assert_same_outputs, const, make_model, run_pass, tensor_info

RNG = np.random.default_rng(0)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.5


def _analyze(model):
    g = compiler.import_onnx(model)
    infer_shapes(g)
    return g, analyze(g)


def _node(g, name):
    return next(n for n in g if n.name == name)


def _units_of(a, node_name, positions, index=1, role="out"):
    """The units that remove `positions` of the layer `node_name`'s created channels."""
    e = next(e for e in a.trace.edits if e.node.name == node_name and e.role == role
             and e.index == index)
    ks = a.position_killers(e.label)
    return set().union(*(ks[p] for p in positions))


def _zero_units(a):
    sc = scores(a, "magnitude")
    return {u for u, s in sc.items() if s == 0.0}


def _prune_zero(model, expect_removed: int):
    g, a = _analyze(model)
    zero = _zero_units(a)
    assert len(zero) == expect_removed
    apply_plan(a, zero)
    assert_same_outputs(model, g, atol=1e-5)
    return g, a, zero


def _conv(name, x, w, b, y, **kw):
    return h.make_node("Conv", [x, w, b], [y], name=name, **kw)


def test_concat_of_differently_sourced_branches_keeps_index_offsets():
    wa, wb, wc = _w(6, 3, 3, 3), _w(4, 3, 1, 1), _w(5, 10, 1, 1)
    ba, bb = _w(6), _w(4)
    wa[[1, 4]] = 0
    ba[[1, 4]] = 0
    wb[2] = 0
    bb[2] = 0
    wc[:, [1, 4, 8]] = 0  # the concat positions of those channels: 1, 4 and 6 + 2
    nodes = [_conv("A", "x", "wa", "ba", "a", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["a"], ["ar"]),
             _conv("B", "x", "wb", "bb", "b"), h.make_node("Sigmoid", ["b"], ["bs"]),
             h.make_node("Concat", ["ar", "bs"], ["c"], axis=1),
             _conv("C", "c", "wc", "bc", "y")]
    m = make_model(nodes, [tensor_info("x", T.FLOAT, [1, 3, 5, 5])],
                   [tensor_info("y", T.FLOAT, [1, 5, 5, 5])],
                   [const(wa, "wa"), const(ba, "ba"), const(wb, "wb"), const(bb, "bb"),
                    const(wc, "wc"), const(_w(5), "bc")])
    g, a = _analyze(m)
    names = sorted(gr.name for gr in a.groups)
    assert names == ["A", "B"]  # C reaches the graph output: unprunable, with its reason
    assert [u.reason for u in a.unprunable] == ["the channels reach the graph output 'y'"]
    zero = _zero_units(a)
    # only channel 2 of B counts: sigmoid(0) = 0.5 is not zero, so its column of C matters
    assert zero == _units_of(a, "A", [1, 4]) | _units_of(a, "B", [2])
    apply_plan(a, zero)
    assert constant_value(_node(g, "A").inputs[1]).shape == (4, 3, 3, 3)
    assert constant_value(_node(g, "B").inputs[1]).shape == (3, 3, 1, 1)
    wc2 = constant_value(_node(g, "C").inputs[1])
    np.testing.assert_array_equal(wc2, wc[:, [0, 2, 3, 5, 6, 7, 9]])
    assert_same_outputs(m, g, atol=1e-5)


def test_residual_add_couples_both_producers():
    w1, w2, w3 = _w(8, 4, 1, 1), _w(8, 4, 1, 1), _w(3, 8, 1, 1)
    for w in (w1, w2):
        w[5] = 0
    w1[2] = 0  # zero in one producer only: the coupled channel still matters
    w3[:, 5] = 0
    nodes = [h.make_node("Conv", ["x", "w1"], ["p"], name="P"),
             h.make_node("Conv", ["x", "w2"], ["q"], name="Q"),
             h.make_node("Add", ["p", "q"], ["s"]), h.make_node("Relu", ["s"], ["r"]),
             h.make_node("Conv", ["r", "w3"], ["y"], name="R")]
    m = make_model(nodes, [tensor_info("x", T.FLOAT, [2, 4, 3, 3])],
                   [tensor_info("y", T.FLOAT, [2, 3, 3, 3])],
                   [const(w1, "w1"), const(w2, "w2"), const(w3, "w3")])
    g, a = _analyze(m)
    assert len(a.groups) == 1 and a.groups[0].name == "P (+1 coupled)"
    assert _units_of(a, "P", [5]) == _units_of(a, "Q", [5])
    g, a, zero = _prune_zero(m, 1)
    assert constant_value(_node(g, "P").inputs[1]).shape == (7, 4, 1, 1)
    assert constant_value(_node(g, "Q").inputs[1]).shape == (7, 4, 1, 1)
    assert constant_value(_node(g, "R").inputs[1]).shape == (3, 7, 1, 1)


def _grouped_model(removed=()):
    """A (1x1, 2 -> 8) -> G (3x3, group 4: blocks of 2 channels) -> C. A's `removed` channels
    and the columns of G that read them are zero."""
    w1, wg, w3 = _w(8, 2, 1, 1), _w(8, 2, 3, 3), _w(4, 8, 1, 1)
    for c in removed:
        w1[c] = 0
        k, j = divmod(c, 2)
        wg[2 * k:2 * k + 2, j] = 0
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], name="A"),
             h.make_node("Conv", ["a", "wg"], ["b"], name="G", group=4, pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["b", "w3"], ["y"], name="C")]
    m = make_model(nodes, [tensor_info("x", T.FLOAT, [1, 2, 4, 4])],
                   [tensor_info("y", T.FLOAT, [1, 4, 4, 4])],
                   [const(w1, "w1"), const(wg, "wg"), const(w3, "w3")])
    return m, wg


def test_grouped_conv_loses_the_same_number_per_group():
    m, _ = _grouped_model()
    g, a = _analyze(m)
    ga = next(gr for gr in a.groups if gr.name == "A")
    assert ga.blocks is not None and [len(b) for b in ga.blocks] == [2, 2, 2, 2]
    gg = next(gr for gr in a.groups if gr.name == "G")
    assert gg.blocks is not None and len(gg.blocks) == 4
    # one channel out of every block: each group of G may drop a different in-group column
    m, wg = _grouped_model(removed=[0, 3, 5, 6])
    g, a = _analyze(m)
    zero = _zero_units(a)
    assert zero == _units_of(a, "A", [0, 3, 5, 6])
    apply_plan(a, zero)
    assert _node(g, "G").attr("group") == 4
    wg_new = constant_value(_node(g, "G").inputs[1])
    assert wg_new.shape == (8, 1, 3, 3)
    for k, col in enumerate([1, 0, 0, 1]):  # the column each group keeps
        np.testing.assert_array_equal(wg_new[2 * k:2 * k + 2, 0], wg[2 * k:2 * k + 2, col])
    assert_same_outputs(m, g, atol=1e-5)


def test_grouped_conv_selection_removes_evenly():
    m, _ = _grouped_model()
    g = compiler.import_onnx(m)
    rep = run_pass(g, "pruning", ratio=0.3).stats["report"]
    ga = next(x for x in rep["groups"] if x["group"] == "A")
    assert ga["removed"] % 4 == 0 and ga["removed"] > 0
    assert constant_value(_node(g, "G").inputs[1]).shape[1] == 2 - ga["removed"] // 4


def test_depthwise_conv_passes_channels_through_and_shrinks_its_group():
    w1, wd, w3 = _w(6, 3, 1, 1), _w(6, 1, 3, 3), _w(4, 6, 1, 1)
    w1[[2, 3]] = 0
    wd[[2, 3]] = 0
    w3[:, [2, 3]] = 0
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], name="A"),
             h.make_node("Conv", ["a", "wd"], ["d"], name="D", group=6, pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["d"], ["r"]),
             h.make_node("Conv", ["r", "w3"], ["y"], name="C")]
    m = make_model(nodes, [tensor_info("x", T.FLOAT, [1, 3, 4, 4])],
                   [tensor_info("y", T.FLOAT, [1, 4, 4, 4])],
                   [const(w1, "w1"), const(wd, "wd"), const(w3, "w3")])
    g, a, _ = _prune_zero(m, 2)
    assert [gr.name for gr in a.groups] == ["A"]
    assert _node(g, "D").attr("group") == 4
    assert constant_value(_node(g, "D").inputs[1]).shape == (4, 1, 3, 3)


def test_split_sizes_are_rewritten():
    w1, wa, wb = _w(8, 3, 1, 1), _w(2, 3, 1, 1), _w(2, 5, 1, 1)
    w1[[1, 6]] = 0
    wa[:, 1] = 0
    wb[:, 3] = 0
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], name="A"),
             h.make_node("Split", ["a", "sizes"], ["s0", "s1"], axis=1),
             h.make_node("Conv", ["s0", "wa"], ["y0"], name="Ca"),
             h.make_node("Conv", ["s1", "wb"], ["y1"], name="Cb"),
             h.make_node("Concat", ["y0", "y1"], ["y"], axis=1)]
    m = make_model(nodes, [tensor_info("x", T.FLOAT, [1, 3, 2, 2])],
                   [tensor_info("y", T.FLOAT, [1, 4, 2, 2])],
                   [const(w1, "w1"), const(wa, "wa"), const(wb, "wb"),
                    const([3, 5], "sizes", np.int64)])
    g, a, _ = _prune_zero(m, 2)
    split = next(n for n in g if n.op_type == "Split")
    assert constant_value(split.inputs[1]).tolist() == [2, 4]


def test_group_reaching_a_graph_output_is_unprunable():
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], name="A"),
             h.make_node("Relu", ["a"], ["y"])]
    m = make_model(nodes, [tensor_info("x", T.FLOAT, [1, 3, 2, 2])],
                   [tensor_info("y", T.FLOAT, [1, 4, 2, 2])], [const(_w(4, 3, 1, 1), "w1")])
    g, a = _analyze(m)
    assert a.groups == []
    assert [(u.name, u.reason) for u in a.unprunable] == [
        ("A", "the channels reach the graph output 'y'")]
    r = run_pass(g, "pruning", ratio=0.5)
    assert not r.modified and r.stats["report"]["unprunable"][0]["name"] == "A"


def test_layernorm_over_the_channels_pins_them_with_a_reason():
    nodes = [h.make_node("MatMul", ["x", "w1"], ["a"], name="A"),
             h.make_node("LayerNormalization", ["a", "s", "b"], ["n"], name="LN", axis=-1),
             h.make_node("MatMul", ["n", "w2"], ["y"], name="B")]
    m = make_model(nodes, [tensor_info("x", T.FLOAT, [2, 4])], [tensor_info("y", T.FLOAT, [2, 3])],
                   [const(_w(4, 6), "w1"), const(np.ones(6), "s", np.float32),
                    const(np.zeros(6), "b", np.float32), const(_w(6, 3), "w2")])
    g, a = _analyze(m)
    assert a.groups == []
    assert dict((u.name, u.reason) for u in a.unprunable)["A"] == \
        "LayerNormalization LN normalizes over it"


def _gated_mlp(zero_units=()):
    d, f = 6, 10
    wg, wu, wd = _w(d, f), _w(d, f), _w(f, d)
    for k in zero_units:
        wg[:, k] = wu[:, k] = wd[k] = 0
    nodes = [h.make_node("MatMul", ["x", "wg"], ["g"], name="gate"),
             h.make_node("Sigmoid", ["g"], ["gs"]), h.make_node("Mul", ["g", "gs"], ["silu"]),
             h.make_node("MatMul", ["x", "wu"], ["u"], name="up"),
             h.make_node("Mul", ["silu", "u"], ["hdn"]),
             h.make_node("MatMul", ["hdn", "wd"], ["o"], name="down"),
             h.make_node("Add", ["x", "o"], ["y"])]
    return make_model(nodes, [tensor_info("x", T.FLOAT, [2, 3, d])],
                      [tensor_info("y", T.FLOAT, [2, 3, d])],
                      [const(wg, "wg"), const(wu, "wu"), const(wd, "wd")])


def test_gated_mlp_prunes_gate_up_and_down_together():
    m = _gated_mlp(zero_units=[1, 7])
    g, a = _analyze(m)
    assert [gr.name for gr in a.groups] == ["gate (+1 coupled)"]
    g, a, _ = _prune_zero(m, 2)
    assert constant_value(_node(g, "gate").inputs[1]).shape == (6, 8)
    assert constant_value(_node(g, "up").inputs[1]).shape == (6, 8)
    assert constant_value(_node(g, "down").inputs[1]).shape == (8, 6)


def _attention(heads=4, kv_heads=4, hd=4, n=5, fused=False, zero_heads=(), zero_kv=()):
    """x [1, n, d] -> attention -> o_proj -> + x. GQA repeats each KV head heads // kv_heads
    times with Unsqueeze/Expand/Reshape, as Hugging Face's repeat_kv exports."""
    d = heads * hd
    rep = heads // kv_heads
    wq, wk, wv, wo = _w(d, d), _w(d, kv_heads * hd), _w(d, kv_heads * hd), _w(d, d)
    for hh in zero_heads:
        wq[:, hh * hd:(hh + 1) * hd] = 0
        wo[hh * hd:(hh + 1) * hd] = 0
    for kv in zero_kv:
        wk[:, kv * hd:(kv + 1) * hd] = wv[:, kv * hd:(kv + 1) * hd] = 0
    inits = [const(wo, "wo"), const(np.float32(hd ** -0.5), "scale"),
             const([1, n, d], "out_shape", np.int64)]
    nodes = []
    if fused:
        assert kv_heads == heads
        inits += [const(np.concatenate([wq, wk, wv], 1), "wqkv"),
                  const([1, n, 3, heads, hd], "qkv_shape", np.int64),
                  const(np.int64(0), "i0"), const(np.int64(1), "i1"), const(np.int64(2), "i2")]
        nodes += [h.make_node("MatMul", ["x", "wqkv"], ["qkv"], name="qkv"),
                  h.make_node("Reshape", ["qkv", "qkv_shape"], ["qkv5"], name="split_heads"),
                  h.make_node("Transpose", ["qkv5"], ["qkvt"], perm=[2, 0, 3, 1, 4]),
                  h.make_node("Gather", ["qkvt", "i0"], ["q"], axis=0),
                  h.make_node("Gather", ["qkvt", "i1"], ["k"], axis=0),
                  h.make_node("Gather", ["qkvt", "i2"], ["v"], axis=0)]
    else:
        inits += [const(wq, "wq"), const(wk, "wk"), const(wv, "wv"),
                  const([1, n, heads, hd], "q_shape", np.int64),
                  const([1, n, kv_heads, hd], "kv_shape", np.int64)]
        for name, w, shp in (("q", "wq", "q_shape"), ("k", "wk", "kv_shape"),
                             ("v", "wv", "kv_shape")):
            nodes += [h.make_node("MatMul", ["x", w], [name + "p"], name=name + "_proj"),
                      h.make_node("Reshape", [name + "p", shp], [name + "4"],
                                  name=name + "_heads"),
                      h.make_node("Transpose", [name + "4"], [name], perm=[0, 2, 1, 3])]
        if rep > 1:
            inits += [const([2], "ax2", np.int64),
                      const([1, kv_heads, rep, n, hd], "exp_shape", np.int64),
                      const([1, heads, n, hd], "rep_shape", np.int64)]
            for name in ("k", "v"):
                nodes += [h.make_node("Unsqueeze", [name, "ax2"], [name + "u"]),
                          h.make_node("Expand", [name + "u", "exp_shape"], [name + "e"],
                                      name=name + "_expand"),
                          h.make_node("Reshape", [name + "e", "rep_shape"], [name + "r"],
                                      name=name + "_repeat")]
            k_in, v_in = "kr", "vr"
        else:
            k_in, v_in = "k", "v"
    k_in = "k" if fused else k_in
    v_in = "v" if fused else v_in
    nodes += [h.make_node("Transpose", [k_in], ["kt"], perm=[0, 1, 3, 2]),
              h.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
              h.make_node("Mul", ["s", "scale"], ["ss"]),
              h.make_node("Softmax", ["ss"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", v_in], ["ctx"], name="pv"),
              h.make_node("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["ctxt", "out_shape"], ["ctx3"], name="merge_heads"),
              h.make_node("MatMul", ["ctx3", "wo"], ["o"], name="o_proj"),
              h.make_node("Add", ["x", "o"], ["y"])]
    return make_model(nodes, [tensor_info("x", T.FLOAT, [1, n, d])],
                      [tensor_info("y", T.FLOAT, [1, n, d])], inits)


def test_fused_qkv_heads_are_pruned_whole_and_reshapes_rewritten():
    m = _attention(heads=4, hd=4, fused=True)
    g, a = _analyze(m)
    assert [(gr.name, len(gr.units)) for gr in a.groups] == [("split_heads", 4)]
    # zero-importance head 2: its q, k and v columns (a fused weight) and its o_proj rows
    model = _attention(heads=4, hd=4, fused=True, zero_heads=[2], zero_kv=[2])
    g, a, zero = _prune_zero(model, 1)
    assert constant_value(_node(g, "qkv").inputs[1]).shape == (16, 36)
    assert constant_value(_node(g, "split_heads").inputs[1]).tolist() == [1, 5, 3, 3, 4]
    assert constant_value(_node(g, "merge_heads").inputs[1]).tolist() == [1, 5, 12]
    assert constant_value(_node(g, "o_proj").inputs[1]).shape == (12, 16)


def test_separate_qkv_heads():
    m = _attention(heads=4, hd=3, zero_heads=[0, 3], zero_kv=[0, 3])
    g, a, _ = _prune_zero(m, 2)
    assert [gr.name for gr in a.groups] == ["k_heads (+2 coupled)"]
    for name in ("q_heads", "k_heads", "v_heads"):
        assert constant_value(_node(g, name).inputs[1]).tolist() == [1, 5, 2, 3]
    assert constant_value(_node(g, "q_proj").inputs[1]).shape == (12, 6)


def test_gqa_prunes_whole_kv_groups_and_rewrites_head_counts():
    m = _attention(heads=4, kv_heads=2, hd=3)
    g, a = _analyze(m)
    # a KV head and the two query heads that share it are one unit
    assert [(gr.name, len(gr.units)) for gr in a.groups] == [("k_heads (+2 coupled)", 2)]
    m = _attention(heads=4, kv_heads=2, hd=3, zero_heads=[2, 3], zero_kv=[1])
    g, a, _ = _prune_zero(m, 1)
    assert constant_value(_node(g, "q_heads").inputs[1]).tolist() == [1, 5, 2, 3]
    assert constant_value(_node(g, "k_heads").inputs[1]).tolist() == [1, 5, 1, 3]
    assert constant_value(_node(g, "k_expand").inputs[1]).tolist() == [1, 1, 2, 5, 3]
    assert constant_value(_node(g, "k_repeat").inputs[1]).tolist() == [1, 2, 5, 3]
    assert constant_value(_node(g, "k_proj").inputs[1]).shape == (12, 3)
    assert constant_value(_node(g, "o_proj").inputs[1]).shape == (6, 12)


def test_gqa_query_heads_alone_are_not_a_unit():
    # zeroing one query head of a KV group is not enough: the group is removed whole or not
    m = _attention(heads=4, kv_heads=2, hd=3, zero_heads=[3])
    g, a = _analyze(m)
    assert _zero_units(a) == set()


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_pass_meets_the_flops_target_and_keeps_numerics_valid(ratio):
    m = _gated_mlp()
    g = compiler.import_onnx(m)
    r = run_pass(g, "pruning", ratio=ratio)
    rep = r.stats["report"]
    assert r.modified and rep["flops_removed"] >= ratio - 0.05
    assert rep["groups"][0]["removed"] > 0 and rep["note"].startswith("no calibration")
    out = compiler.export_onnx(g)
    import onnx

    onnx.checker.check_model(out, full_check=True)


def test_llama_style_decoder_swiglu_units_prune_exactly_and_kv_heads_say_why_not():
    """The zoo's exported Llama-style decoder (GQA, SwiGLU, RoPE, KV cache in and out)."""
    from compiler import zoo
    from compiler.onnx_io import export_onnx

    g = compiler.optimize(str(zoo.get("decoder")), "simplify")
    mlp = {}
    for n in g:
        for part in ("gate_proj", "up_proj", "down_proj"):
            if f"layers.0/mlp/{part}/" in n.name and n.op_type == "MatMul":
                mlp[part] = n
    zero = [3, 100, 500]
    for part, n in mlp.items():
        w = np.array(constant_value(n.inputs[1]))
        if part == "down_proj":
            w[zero] = 0
        else:
            w[:, zero] = 0
        n.set_input(1, g.make_constant(w, part))
    before = export_onnx(g)
    infer_shapes(g)
    a = analyze(g)
    names = [gr.name for gr in a.groups]
    assert len(names) == 4 and all("gate_proj" in x and "(+1 coupled)" in x for x in names)
    # heads: the KV cache concatenates them with past_key_values (a graph input)
    reasons = " ".join(u.reason for u in a.unprunable if "self_attn/Reshape" in u.name)
    assert "Concat" in reasons and "untraced" in reasons
    zero_units = _zero_units(a)
    assert len(zero_units) == 3
    apply_plan(a, zero_units)
    assert constant_value(mlp["down_proj"].inputs[1]).shape[0] == 688 - 3
    feeds = zoo.example_inputs("decoder", batch=2)
    from tests.helpers import run_ort

    ref, got = run_ort(before, feeds), run_ort(export_onnx(g), feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-4, err_msg=k)
