"""The shape of the package, checked: imports only point down the layers that docs/design.md
lists, no import hides inside a function, functions fit on a screen, files hold one idea, and
no test module imports another (shared helpers live in conftest.py or a support module)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 450


def documented_layers() -> list[list[str]]:
    """The layers, bottom first, from the fenced ``layers`` block of docs/design.md: one line per
    layer, modules of the same layer separated by spaces."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = re.search(r"```text\n# layers, bottom first\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no '# layers, bottom first' block"
    return [line.split("#")[0].split() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, layers: list[list[str]]) -> int:
    """Index of the layer holding ``module`` (the longest documented prefix wins)."""
    best, where = -1, None
    for i, names in enumerate(layers):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, where = len(name), i
    assert where is not None, f"{module} is in no layer of docs/design.md"
    return where


def medcl_imports(tree: ast.Module, module: str):
    """(node, imported module) for every import of a medcl module in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "medcl" or alias.name.startswith("medcl."):
                    yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(module.split(".")[:-node.level] + [node.module])
            if base == "medcl" and node.level == 0:
                for alias in node.names:          # from medcl import tracking -> medcl.tracking
                    yield node, f"medcl.{alias.name}"
            elif base.startswith("medcl."):
                yield node, base


def package_files() -> list[Path]:
    return sorted((ROOT / "medcl").rglob("*.py"))


def test_every_import_points_down_or_sideways():
    layers = documented_layers()
    upward = []
    for f in package_files():
        mod = module_name(f)
        mine = layer_of(mod, layers)
        for node, target in medcl_imports(ast.parse(f.read_text()), mod):
            theirs = layer_of(target, layers)
            if theirs > mine:
                upward.append(f"{f.relative_to(ROOT)}:{node.lineno} {mod} (layer {mine}) imports {target} (layer {theirs})")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_of_medcl_inside_a_function():
    hidden = []
    for f in package_files():
        tree = ast.parse(f.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node, target in medcl_imports(fn, module_name(f)):
                    hidden.append(f"{f.relative_to(ROOT)}:{node.lineno} {fn.name}() imports {target}")
    assert not hidden, "imports of medcl modules inside functions:\n" + "\n".join(hidden)


def test_the_layer_test_catches_an_upward_and_a_hidden_import(tmp_path):
    """The checks above can fail: an upward import and a function-level one are both found."""
    layers = documented_layers()
    tree = ast.parse("from medcl.cli import main\n\ndef f():\n    import medcl.report\n")
    found = [(n.lineno, t) for n, t in medcl_imports(tree, "medcl.losses.x")]
    assert found == [(1, "medcl.cli"), (4, "medcl.report")]
    assert layer_of("medcl.cli", layers) > layer_of("medcl.losses.x", layers)


def test_functions_fit_on_a_screen_and_files_hold_one_idea():
    long_functions, long_files = [], []
    for f in package_files() + sorted((ROOT / "pipelines").rglob("*.py")):
        text = f.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{f.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long_functions)
    assert not long_files, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(long_files)


@pytest.mark.parametrize("test_file", sorted(p.name for p in (ROOT / "tests").glob("test_*.py")))
def test_no_test_module_imports_another(test_file):
    tree = ast.parse((ROOT / "tests" / test_file).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in names if m.split(".")[0].startswith("test_")}, f"{test_file} imports a test module"
