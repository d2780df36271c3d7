"""Model families share code only through the shared modules; NR reaches them by protocol."""

import ast
from pathlib import Path

import cnnlab

PACKAGE = Path(cnnlab.__file__).parent
# Modules of cnnlab/models that are not a family: layers, blocks and protocols families share.
SHARED = {"layers", "blocks", "dense_blocks", "unit_graph", "nr_layers", "binary", "binary_blocks"}


def cnnlab_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("cnnlab")}
    return names


def model_modules(path: Path) -> set[str]:
    return {m.split(".")[2] for m in cnnlab_imports(path) if m.startswith("cnnlab.models.")}


def test_no_family_imports_another_family():
    for path in (PACKAGE / "models").glob("*.py"):
        assert model_modules(path) <= SHARED, path.name


def test_rejuvenation_reads_families_only_through_the_unit_graph_protocol():
    paths = list((PACKAGE / "methods" / "rejuvenation").glob("*.py"))
    assert paths
    for path in paths:
        assert model_modules(path) <= {"unit_graph", "nr_layers"}, path.name


def test_the_probe_callback_imports_no_other_method_and_no_model():
    imports = cnnlab_imports(PACKAGE / "methods" / "probes.py")
    assert not {
        m for m in imports if m.startswith(("cnnlab.methods.rejuvenation", "cnnlab.models"))
    }
