"""The import habit `make lint` cannot check: an import inside a function body is there for start-up time
(torch, transformers, peft, rich, matplotlib and optional packages load on first use; `fedbip --help`
imports the cli modules) or to break a circle, and says so in a comment, once per function: on the line
of one of its imports, or in the comment lines above one of its import blocks."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fedbip_cli"


def _function_imports(tree: ast.AST) -> dict[ast.AST, list[ast.stmt]]:
    """The run-time imports inside function bodies, by innermost function."""
    found: dict[ast.AST, list[ast.stmt]] = {}

    def visit(node: ast.AST, function: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: nothing imported at run time
            if isinstance(child, (ast.Import, ast.ImportFrom)) and function is not None:
                found.setdefault(function, []).append(child)
            visit(child, child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function)

    visit(tree, None)
    return found


def _explained(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's last line, or in the lines above it, going up through the block of
    imports (and blank lines) it belongs to."""
    if "#" in lines[(node.end_lineno or node.lineno) - 1]:
        return True
    i = node.lineno - 2
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("#"):
            return True
        if not text or text.startswith(("import ", "from ")) or text in (")",) or text.endswith((",", "(")):
            i -= 1
            continue
        return False
    return False


def test_every_function_level_import_says_why():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for imports in _function_imports(ast.parse(text)).values():
            if not any(_explained(lines, node) for node in imports):
                first = imports[0]
                where = f"{path.relative_to(PACKAGE.parent)}:{first.lineno}"
                unexplained.append(f"{where}: {lines[first.lineno - 1].strip()}")
    assert not unexplained, "function-level imports without a comment saying why:\n" + "\n".join(unexplained)
