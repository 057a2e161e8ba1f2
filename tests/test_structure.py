"""The package's shape (docs/EXTENDING.md, README "How it is built"), checked on the import graph.

Every import counts, at module level or inside a function (a circle hidden behind a function-
level import is still a circle) and under TYPE_CHECKING. Layers, bottom to top; a module may
import its own layer and the layers below, never one above:

  core      config, registry, train_config, protocols, recipes
  base      data/, ebm/ (math only), models/
  engine    engine/ (the loop, strategies, checkpoints)
  plugins   objectives/, finetune/, stages/
  products  export, model_card, hub, hub_checkpoints, plots, workflow, chain, slurm, bench/
  cli       cli, commands/, __main__
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

LAYERS = [
    ("core", ["pipeline.config", "pipeline.registry", "pipeline.train_config", "pipeline.protocols",
              "pipeline.recipes"]),
    ("base", ["pipeline.data", "pipeline.ebm", "pipeline.models"]),
    ("engine", ["pipeline.engine"]),
    ("plugins", ["pipeline.objectives", "pipeline.finetune", "pipeline.stages"]),
    ("products", ["pipeline.export", "pipeline.model_card", "pipeline.hub", "pipeline.plots",
                  "pipeline.workflow", "pipeline.chain", "pipeline.slurm", "pipeline.bench",
                  "pipeline.hub_checkpoints"]),
    ("cli", ["pipeline.cli", "pipeline.commands", "pipeline.__main__"]),
]  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the pipeline modules it imports (anywhere in the file)."""
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            # `from pipeline import config` names the module pipeline.config; the bare
            # top-level package (an empty __init__) is not a dependency
            graph[name] |= {t for t in targets if t in mods and t not in (name, "pipeline")}
    return graph


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py: place it")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for name in modules():
        if name != "pipeline":
            layer_of(name)


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
    """Packages (engine, objectives, ebm...) do not import each other in a circle either."""
    package_graph: dict[str, set[str]] = defaultdict(set)
    for src, targets in import_graph().items():
        for t in targets:
            a, b = ".".join(src.split(".")[:2]), ".".join(t.split(".")[:2])
            if a != b:
                package_graph[a].add(b)
    assert cycles(package_graph) == []


def test_no_module_imports_a_layer_above_it():
    wrong = sorted(
        f"{src} ({LAYERS[layer_of(src)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for src, targets in import_graph().items()
        if src != "pipeline"
        for t in targets
        if layer_of(t) > layer_of(src)
    )
    assert wrong == []


def test_only_the_deepspeed_strategy_imports_deepspeed():
    users = sorted(
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(import deepspeed|from deepspeed\b)", path.read_text(), re.M)
    )
    assert users == ["pipeline/engine/deepspeed.py"]


def test_the_strategy_name_is_read_in_one_place():
    """No `strategy == "deepspeed"` or `distributed_type == "DEEPSPEED"` branches outside the
    strategy modules: differences between strategies are methods of engine/strategy.py."""
    compare = re.compile(
        r"\bstrategy\s*(==|!=|in\b)|(==|!=)\s*[\w.]*strategy\b|distributed_type\s*(==|!=)"
        r"|[\"']DEEPSPEED[\"']"
    )
    allowed = {"pipeline/engine/strategy.py", "pipeline/engine/deepspeed.py"}
    offenders = sorted(
        f"{path.relative_to(ROOT)}:{i}"
        for path in PACKAGE.rglob("*.py")
        if str(path.relative_to(ROOT)) not in allowed
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if compare.search(line)
    )
    assert offenders == []
