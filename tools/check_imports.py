"""Import-graph check for edgec's packages: no cycles, and no import from a lower layer upward.

The graph has one node per module of the scanned packages (a package's `__init__.py` is the
package's node) and one edge per import statement found anywhere in a module's syntax tree:
top-level, inside functions and classes, relative or absolute. A function-level (lazy) import
delays loading, but its module still needs the other one, so it counts. Imports under
`if TYPE_CHECKING:` do not: they never run (annotations only). `import a.b.c` names the
module a.b.c; `from a.b import c` names a.b.c when that is a module, else a.b (c is a name
defined there); a named module that does not exist is reported as a note, not an edge.
Imports of anything outside the scanned packages are ignored. Strings handed to
`importlib.import_module` (the pass, rule-set and backend registries) are not followed:
registries name modules of their own layer or higher. Two things Python does on import count
as edges too: importing a.b.c first runs the `__init__` of a and a.b (unless they are the
importer's own packages), and a package whose `__init__` loads names on first use declares
them in a literal `_LAZY = {name: module}` (`compiler.lazy`), through which `from a import
name` resolves.

Checks (stdlib `ast` only, so it runs before anything is installed):
- cycles: every strongly connected component of more than one module is an error; for each,
  the elementary cycles are listed with their paths (up to `MAX_CYCLES_SHOWN` per component);
- layers: `LAYERS` orders modules (and package trees, "a.*") from the bottom up; a module
  may import its own layer or lower ones, never a higher one. A module no entry matches
  belongs to `DEFAULT_LAYER`, the driver (new driver-level modules need no entry; a new
  low-level module does; with `--layer`, the top one). `ALLOWED` lists upward edges accepted
  on purpose, each with its reason; it is empty.

    python tools/check_imports.py            # the repository's packages; exit 1 on any error
    python tools/check_imports.py --root DIR --package pkg --layer low=pkg.a --layer high=pkg.b
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["ALLOWED", "DEFAULT_LAYER", "LAYERS", "PACKAGES", "check", "cycles", "import_graph",
           "layer_of", "lazy_names", "main", "modules", "strongly_connected"]

PACKAGES = ("compiler", "passes", "targets")

# Bottom first. An entry names one module ("compiler.ir") or, ending in ".*", a package and
# everything below it ("compiler.cost.*"); the most specific entry wins.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # the IR, its tensors and errors, model/calibration-data I/O, the version, this CPU's
    # facts; the `compiler` package itself (its __init__ loads the driver's API lazily)
    ("ir", ("compiler", "compiler.lazy", "compiler.errors", "compiler.version",
            "compiler.cpuinfo", "compiler.tensor", "compiler.ir", "compiler.onnx_io",
            "compiler.torch_io", "compiler.calib_data",
            # ap_fixed arithmetic and the IR read as an FPGA dataflow chain (with its exact
            # reference): the fixed-point pass, the FPGA cost model and the hls backend use them
            "compiler.fixedpoint", "compiler.fpga_layers", "compiler.fixed_sim",
            # memory guards, and verification (reference outputs, comparison, generated
            # inputs: the IR and ONNX Runtime only), which backends use to bind shapes
            "compiler.resources", "compiler.verify",
            # the cost package's __init__ (its names load lazily)
            "compiler.cost")),
    # graph rewrites, the pass manager and pipelines, precision assignment/lowering; and the
    # FLOPs/element counts of the IR (compiler/cost/flops.py: device-free, it imports only the
    # IR), which pruning's FLOPs target reads as the cost model does
    ("passes", ("passes.*", "compiler.pipeline", "compiler.precision_api",
                "compiler.cost.flops")),
    # the cost model (reads shapes and quantization helpers from passes)
    ("cost", ("compiler.cost.*",)),
    # backends, device profiles, the host profile, measurement harness
    ("targets", ("targets.*",)),
    # compile(), the configuration search, pruning's entry points, verification, bundles, CLI
    ("driver", ("compiler.driver", "compiler.search", "compiler.prune_api",
                "compiler.prune_auto", "compiler.cli", "compiler.inspect", "compiler.artifact",
                "compiler.inputs", "compiler.diagnose")),
    # test and demo models, and the demo (the product never imports them)
    ("zoo", ("compiler.zoo.*", "compiler.demo")),
)

DEFAULT_LAYER = "driver"  # the layer of a module no prefix matches

# (importer, imported) -> why this upward import is accepted. Keep it empty where possible.
ALLOWED: dict[tuple[str, str], str] = {}

MAX_CYCLES_SHOWN = 20


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """{module name: file} for every .py file under the given package folders of `root`."""
    out: dict[str, Path] = {}
    for pkg in packages:
        base = root / pkg
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def lazy_names(path: Path) -> dict[str, str]:
    """A package's `_LAZY = {name: module}` literal (names its __init__ loads on first use)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


def _imports(module: str, path: Path, known: Mapping[str, Path],
             missing: set[tuple[str, str]] | None = None,
             lazy: Mapping[str, Mapping[str, str]] | None = None) -> set[str]:
    """The scanned modules `module` imports. `import a.b` names the module a.b; `from a.b import
    c` names a.b.c when that is a module, else a.b (c is a name defined there). A named module
    of a scanned package that does not exist is left out of the graph and added to `missing`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    roots = {m.split(".")[0] for m in known}
    lazy = lazy or {}
    parts = module.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # itself and its packages
    out: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            found: list[tuple[str, str | None]] = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found = [(prefix, a.name) for a in node.names]
        else:
            continue
        for mod, name in found:
            if mod.split(".")[0] not in roots:
                continue  # the standard library or a third-party package
            if name is not None and f"{mod}.{name}" in known:
                hit: str | None = f"{mod}.{name}"
            elif name is not None and name in lazy.get(mod, {}):
                hit = lazy[mod][name]  # a package attribute loaded on first use
            else:
                hit = mod if mod in known else None
            if hit is None:
                if missing is not None:
                    missing.add((module, mod))
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ first, unless they are this
            # module's own packages (already initialised when it runs)
            hp = hit.split(".")
            for h in {".".join(hp[:i]) for i in range(1, len(hp) + 1)} - own:
                if h in known:
                    out.add(h)
    return out


def import_graph(root: Path, packages: Iterable[str] = PACKAGES,
                 missing: set[tuple[str, str]] | None = None) -> dict[str, set[str]]:
    """{module: modules it imports} over the scanned packages; imports of modules that do not
    exist go to `missing` as (importer, module)."""
    known = modules(root, packages)
    lazy = {m: lazy_names(p) for m, p in known.items() if p.name == "__init__.py"}
    return {m: _imports(m, p, known, missing, lazy) for m, p in known.items()}


def strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    comps.append(sorted(comp))
    return sorted(comps, key=lambda c: (-len(c), c))


def cycles(graph: Mapping[str, set[str]], comp: Sequence[str],
           limit: int = 10_000) -> list[list[str]]:
    """Elementary cycles inside one component (each starts at its smallest module), at most
    `limit` of them."""
    members = set(comp)
    out: list[list[str]] = []
    for s in sorted(comp):
        allowed = {m for m in members if m >= s}
        path, todo = [s], [iter(sorted(graph[s] & allowed))]
        while todo and len(out) < limit:
            for w in todo[-1]:
                if w == s:
                    out.append(path + [s])
                elif w not in path:
                    path.append(w)
                    todo.append(iter(sorted(graph[w] & allowed)))
                    break
            else:
                todo.pop()
                path.pop()
    return out


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]],
             default: str | None = None) -> int:
    """Index of the layer whose most specific entry matches `module` ("a.b" only a.b, "a.b.*"
    a.b and below); if none, the layer named `default` (None: the top one)."""
    names = [n for n, _ in layers]
    best, best_len = names.index(default) if default else len(layers) - 1, -1
    for i, (_, entries) in enumerate(layers):
        for e in entries:
            base, tree = (e[:-2], True) if e.endswith(".*") else (e, False)
            hit = module == base or (tree and module.startswith(base + "."))
            size = len(base) + (0 if tree else 1)  # an exact entry beats a tree of the same name
            if hit and size > best_len:
                best, best_len = i, size
    return best


def check(root: Path, packages: Iterable[str] = PACKAGES,
          layers: Sequence[tuple[str, Sequence[str]]] = LAYERS,
          allowed: Mapping[tuple[str, str], str] = ALLOWED,
          default: str | None = DEFAULT_LAYER) -> tuple[list[str], dict]:
    """(error lines, counts) for the packages under `root`."""
    missing: set[tuple[str, str]] = set()
    graph = import_graph(root, packages, missing)
    errors: list[str] = []
    n_cycles = 0
    comps = [c for c in strongly_connected(graph) if len(c) > 1]
    for comp in comps:
        found = cycles(graph, comp)
        n_cycles += len(found)
        errors.append(f"import cycle among {len(comp)} modules ({len(found)} cycles): "
                      + ", ".join(comp))
        for cyc in found[:MAX_CYCLES_SHOWN]:
            errors.append("    " + " -> ".join(cyc))
        if len(found) > MAX_CYCLES_SHOWN:
            errors.append(f"    ... and {len(found) - MAX_CYCLES_SHOWN} more")
    n_upward = 0
    for mod in sorted(graph):
        lo = layer_of(mod, layers, default)
        for dep in sorted(graph[mod]):
            hi = layer_of(dep, layers, default)
            if hi > lo and (mod, dep) not in allowed:
                n_upward += 1
                errors.append(f"upward import: {mod} (layer {layers[lo][0]}) imports {dep} "
                              f"(layer {layers[hi][0]})")
    counts = {"modules": len(graph), "edges": sum(map(len, graph.values())),
              "cyclic_components": len(comps), "cycles": n_cycles, "upward": n_upward,
              "missing": sorted(missing)}
    return errors, counts


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--package", action="append", help="package folder to scan (repeatable)")
    ap.add_argument("--layer", action="append", metavar="NAME=PREFIX[,PREFIX]",
                    help="a layer, bottom first (repeatable); default: the repository's")
    args = ap.parse_args(argv)
    layers: Sequence[tuple[str, Sequence[str]]] = LAYERS
    allowed: Mapping[tuple[str, str], str] = ALLOWED
    default: str | None = DEFAULT_LAYER
    if args.layer:
        layers = [(n, tuple(p.split(","))) for n, _, p in (s.partition("=") for s in args.layer)]
        allowed, default = {}, None
    errors, counts = check(args.root, args.package or PACKAGES, layers, allowed, default)
    for line in errors:
        print(line)
    for importer, mod in counts["missing"]:  # not an error here: the import fails when it runs
        print(f"note: {importer} imports {mod}, which does not exist")
    print(f"{counts['modules']} modules, {counts['edges']} imports: "
          f"{counts['cyclic_components']} cyclic components ({counts['cycles']} cycles), "
          f"{counts['upward']} upward imports")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
