"""The engine's layers, as the README's Development section draws them: each room of
``segmenter/ml`` imports only the rooms below it, and nothing in it imports Django or the
app. Read from the source (every import statement, at any depth), so a lazy import inside
a function counts too."""

import ast
from pathlib import Path

import pytest

ML = Path(__file__).resolve().parents[2] / "segmenter" / "ml"

#: What each part of segmenter/ml may import from segmenter.ml (besides itself).
MAY_IMPORT = {
    "constants": set(),
    "errors": set(),
    "paths": set(),
    "io": {"constants", "errors"},
    "model": {"constants", "errors", "paths", "io"},
    "results": {"constants", "errors", "io"},
    "pipeline": {"constants", "errors", "io", "results"},
    # the offline rooms: training validates with evaluation's metrics, evaluation reads training's data
    "training": {"constants", "errors", "paths", "io", "model", "results", "pipeline", "evaluation"},
    "evaluation": {"constants", "errors", "paths", "io", "model", "results", "pipeline", "training"},
    "bench": {"evaluation"},
}


def part_of(path: Path) -> str:
    rel = path.relative_to(ML)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(path: Path) -> set[str]:
    """Absolute module names imported by the file at ``path``."""
    package = ["segmenter", "ml", *path.relative_to(ML).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".") if node.module or base else ""
            names.add(module)
            if not node.module:  # from . import x
                names |= {f"{module}.{a.name}" for a in node.names}
    return names


FILES = sorted(p for p in ML.rglob("*.py") if p.name != "__init__.py")


def test_every_file_belongs_to_a_known_part():
    assert {part_of(p) for p in FILES} <= set(MAY_IMPORT)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ML)))
def test_imports_follow_the_layers(path):
    part = part_of(path)
    wrong = []
    for name in imported(path):
        top = name.split(".")[0]
        if top in {"django", "rest_framework", "drf_spectacular", "django_tasks"}:
            wrong.append(name)
        elif name.startswith("segmenter.ml."):
            target = name.split(".")[2]
            if target != part and target not in MAY_IMPORT[part]:
                wrong.append(name)
        elif name == "segmenter" or (name.startswith("segmenter.") and not name.startswith("segmenter.ml")):
            wrong.append(name)
    assert wrong == [], f"{path.relative_to(ML)} ({part}) may import only {sorted(MAY_IMPORT[part])}"


def test_relative_imports_are_resolved():
    # the rule above is only as good as this resolution: a file two levels down
    nested = ML / "model" / "ensemble.py"
    assert "segmenter.ml.io.ctcheck" in imported(nested) and "segmenter.ml.constants" in imported(nested)
