"""Fusion rule sets, one module per family; `RULE_SETS` lists them in the order they run.

Order matters: cleanups first (transpose/reshape cancellation, CSE, Conv+BN folding), then the
multi-op patterns (norms, GELU, attention), then epilogues that extend fused ops, then Gemm, QKV
merging, and last the biased-MatMul groups, which would otherwise claim nodes others need.
"""

from __future__ import annotations

import importlib

from passes.rewrite import RuleSet

__all__ = ["RULE_SETS", "get_rule_set"]

# rule-set name -> (module, attribute)
RULE_SETS: dict[str, tuple[str, str]] = {
    "transpose": ("passes.fusion_rules.transpose", "RULE_SET"),
    "cse": ("passes.fusion_rules.cse", "RULE_SET"),
    "conv_bn": ("passes.fusion_rules.conv_bn", "RULE_SET"),
    "norm": ("passes.fusion_rules.norm", "RULE_SET"),
    "activation": ("passes.fusion_rules.activation", "RULE_SET"),
    "attention": ("passes.fusion_rules.attention", "RULE_SET"),
    "epilogue": ("passes.fusion_rules.activation", "EPILOGUE_RULE_SET"),
    "gemm": ("passes.fusion_rules.gemm", "RULE_SET"),
    "qkv": ("passes.fusion_rules.qkv", "RULE_SET"),
    "matmul_bias": ("passes.fusion_rules.gemm", "GROUP_RULE_SET"),
}


def get_rule_set(name: str) -> RuleSet:
    module, attr = RULE_SETS[name]
    return getattr(importlib.import_module(module), attr)
