"""The house rules of the package tree that the import contract (make lint) does not cover.

docs/layout.md states them: no ``_private`` name imported from another module, no function over
80 lines of code (argparse declarations aside), a docstring and ``__all__`` on every module, and
test support kept out of the installed package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "nightact"
MAX_CODE_LINES = 80


def _modules(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def private_imports(path: Path) -> list[str]:
    """``from x import _name`` and ``module._name`` uses, where x is another module."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(
                        f"{path.name}:{node.lineno} from {node.module} import {alias.name}"
                    )
    return found


def code_lines(source_lines: list[str], node: ast.AST) -> int:
    """Lines of a function's body that are code: no blank, comment-only or docstring lines."""
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    lines = source_lines[body[0].lineno - 1 : node.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def long_functions(path: Path) -> list[str]:
    source_lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for node in ast.walk(_tree(path)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        # argparse declarations are long lists of flags, not logic.
        if "cli" in path.relative_to(PACKAGE).parts and node.name.lstrip("_").startswith("add_"):
            continue
        count = code_lines(source_lines, node)
        if count > MAX_CODE_LINES:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({count} lines)")
    return found


def test_no_private_name_is_imported_from_another_module():
    places = (
        _modules(PACKAGE) + _modules(ROOT / "benchmarks") + _modules(ROOT / "tests" / "support")
    )
    found = [hit for path in places for hit in private_imports(path)]
    assert found == []


def test_the_checks_see_what_they_look_for(tmp_path):
    # The two scanners find a private import and a long function when there is one.
    sample = tmp_path / "sample.py"
    body = "\n".join(f"    x{index} = {index}" for index in range(MAX_CODE_LINES + 1))
    sample.write_text(f"from nightact.core.videos import _hidden\n\ndef long():\n{body}\n")
    assert private_imports(sample) == ["sample.py:1 from nightact.core.videos import _hidden"]
    tree = _tree(sample)
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef))
    assert code_lines(sample.read_text().splitlines(), function) == MAX_CODE_LINES + 1


def test_no_function_is_longer_than_80_lines_of_code():
    assert [hit for path in _modules(PACKAGE) for hit in long_functions(path)] == []


@pytest.mark.parametrize("path", _modules(PACKAGE), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_every_module_has_a_docstring_and_modules_with_code_declare_all(path):
    tree = _tree(path)
    assert ast.get_docstring(tree), f"{path}: no module docstring"
    has_code = any(
        not isinstance(node, (ast.Expr, ast.Import, ast.ImportFrom)) for node in tree.body
    )
    declares_all = any(
        isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets)
        for node in tree.body
    )
    if has_code and path.name != "__main__.py":
        assert declares_all, f"{path}: no __all__"


def test_every_stage_is_a_package_and_test_support_is_not_installed():
    stages = ["core", "sources", "data", "nets", "training", "scoring", "serve", "cli"]
    for stage in stages:
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
    assert not (PACKAGE / "copies.py").exists()
    assert (ROOT / "tests" / "support" / "copies.py").is_file()
    for path in _modules(PACKAGE):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("support", "tests")), f"{path}: {node.module}"
