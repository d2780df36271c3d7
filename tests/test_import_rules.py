"""The layer rules of docs/architecture.md, read from the code's imports (ast), so they cannot
drift from it: each package imports only its own layer and those below, no module imports
another's private names, and no import cycle exists among the modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cnnlab"

# Lowest first. A module may import its own layer's modules and any layer below; layers that
# share a rank (models and data) may not import each other.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "core", ("cnnlab.errors", "cnnlab.registry", "cnnlab.version")),
    (1, "config", ("cnnlab.config", "cnnlab.config_diff")),
    (2, "models", ("cnnlab.models",)),
    (2, "data", ("cnnlab.data",)),
    (3, "analysis", ("cnnlab.analysis",)),
    (4, "engine", ("cnnlab.engine",)),
    (5, "methods", ("cnnlab.methods",)),
    (6, "run", ("cnnlab.run",)),
    (7, "experiments", ("cnnlab.experiments",)),
    (7, "inference", ("cnnlab.inference",)),
    (8, "commands", ("cnnlab.commands", "cnnlab.cli", "cnnlab.__main__")),
    (9, "api", ("cnnlab", "cnnlab.datasets")),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> tuple[int, str]:
    best = None
    for rank, name, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), (rank, name))
    assert best is not None, f"{module} belongs to no layer; add it to LAYERS and the docs"
    return best[1]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    is_package = (PACKAGE.parent / Path(*base) / "__init__.py").exists()
    keep = len(base) - node.level + (1 if is_package else 0)
    return ".".join(base[:keep] + ([node.module] if node.module else []))


def _imports(path: Path, module: str | None = None) -> list[tuple[str, list[str], bool]]:
    """Return (imported module, names, at import time) for every import in the file; imports
    inside functions or under TYPE_CHECKING do not run at import time."""
    module = module or _module_name(path)
    tree = ast.parse(path.read_text())
    found: list[tuple[str, list[str], bool]] = []

    def visit(node: ast.AST, runtime: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_runtime = runtime
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                child_runtime = False
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                child_runtime = False
            if isinstance(child, ast.Import):
                found.extend((a.name, [], runtime) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, child)
                names = [a.name for a in child.names]
                # `from cnnlab import commands` imports the submodule, not the package.
                subs = [n for n in names if _is_module(f"{target}.{n}")]
                found.extend((f"{target}.{n}", [], runtime) for n in subs)
                if len(subs) < len(names):
                    found.append((target, [n for n in names if n not in subs], runtime))
            visit(child, child_runtime)

    visit(tree, True)
    return [(m, names, rt) for m, names, rt in found if m == "cnnlab" or m.startswith("cnnlab.")]


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer_violations(modules: dict[str, Path]) -> list[str]:
    broken = []
    for name, path in modules.items():
        rank, layer = _layer(name)
        for target, _, _ in _imports(path, name):
            t_rank, t_layer = _layer(target)
            if t_rank > rank or (t_rank == rank and t_layer != layer):
                broken.append(f"{name} ({layer}) imports {target} ({t_layer})")
    return broken


def test_every_import_points_down_the_layers():
    broken = _layer_violations(_modules())
    assert not broken, "imports against the layer rules:\n" + "\n".join(broken)


def test_no_module_imports_another_modules_private_names():
    broken = [
        f"{name} imports {target}.{n}"
        for name, path in _modules().items()
        for target, names, _ in _imports(path)
        for n in names
        if n.startswith("_") and target != name
    ]
    assert not broken, "private names imported across modules:\n" + "\n".join(broken)


def _package_chain(target: str, modules: dict[str, Path]) -> str:
    # `from cnnlab.models import x` names the package; a submodule import names the module.
    return target if target in modules else target.rsplit(".", 1)[0]


def test_no_import_cycle():
    modules = _modules()
    graph = {
        name: {
            _package_chain(t, modules)
            for t, _, runtime in _imports(path)
            if runtime and _package_chain(t, modules) in modules
        }
        - {name}
        for name, path in modules.items()
    }
    # A package's __init__ importing its own submodules is how registration works; a cycle
    # through a package's own __init__ is not a dependency cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := walk(name)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_rules_catch_an_upward_import(tmp_path):
    # The checker itself must see a violation: a model family importing the engine.
    bad = tmp_path / "family.py"
    bad.write_text("from cnnlab.engine.trainer import Trainer\n")
    assert _layer_violations({"cnnlab.models.family": bad}) == [
        "cnnlab.models.family (models) imports cnnlab.engine.trainer (engine)"
    ]
