"""The floor plan holds: imports point down, no circle, files and functions readable in one sitting."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gpt_classifier"
# What each subpackage must not import (by module-name prefix).
FORBIDDEN = {
    "model": (
        "gpt_classifier.data.datamodule",
        "gpt_classifier.training",
        "gpt_classifier.deploy",
        "gpt_classifier.cli",
        "lightning",
        "hydra",
        "omegaconf",
    ),
    "data": (
        "gpt_classifier.model",
        "gpt_classifier.training",
        "gpt_classifier.deploy",
        "gpt_classifier.cli",
    ),
    "training": ("gpt_classifier.deploy", "gpt_classifier.cli"),
    "deploy": ("gpt_classifier.training", "gpt_classifier.cli", "lightning", "hydra"),
}
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 50


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the signature and docstring to the end: what one reads to
    follow it (a constructor's keyword arguments, one a line, are its settings' list, not its logic)."""
    body = function.body
    first = (
        body[1]
        if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        else body[0]
    )
    return function.end_lineno - first.lineno + 1


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    area = path.relative_to(PACKAGE).parts[0]
    banned = FORBIDDEN.get(area, ())
    wrong = sorted(n for n in imported_modules(path) if any(n == b or n.startswith(b + ".") for b in banned))
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {wrong}: {area}/ must not"


def test_no_import_circle_between_modules():
    modules = {module_name(p): p for p in SOURCES}
    graph = {
        name: {m for m in imported_modules(path) if m in modules and m != name and m != "gpt_classifier"}
        for name, path in modules.items()
    }
    visiting, done = set(), set()

    def visit(name, trail):
        if name in visiting:
            raise AssertionError("import circle: " + " -> ".join([*trail, name]))
        if name in done:
            return
        visiting.add(name)
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_files_and_functions_read_in_one_sitting():
    too_long = []
    for path in SOURCES:
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = body_lines(node)
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
