"""The package's structure: no import circles, layers import only downwards, and the
training loop names no method (methods plug in through ``udi.methods``)."""

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "udi"

# Lowest first: a module may import from its own layer and the layers before it. Modules of
# no layer (udi, udi.config, udi.schedules) are foundations that any module may import.
LAYERS = ["io", "data", "losses", "models", "methods", "eval", "train", "viz", "cli"]
METHOD_NAMES = ("bootleg", "dino", "udi")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``udi`` modules ``path`` imports anywhere (top level or inside functions);
    ``from udi.x import y`` counts as importing ``udi.x.y`` where that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    key = "cli" if module in ("udi.cli", "udi.__main__") else (parts[1] if len(parts) > 1 else None)
    return LAYERS.index(key) if key in LAYERS else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_lazy_imports_and_submodules():
    graph = import_graph()
    assert "udi.eval.suite" in graph["udi.cli"]  # imported inside a function
    assert "udi.schedules" in graph["udi.train.loop"]  # `from udi import schedules`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_layers_import_only_downwards():
    wrong = []
    for module, targets in import_graph().items():
        layer = layer_of(module)
        for target in targets:
            if layer is not None and layer_of(target) is not None and layer_of(target) > layer:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports from a higher layer: " + ", ".join(sorted(wrong))


def test_models_do_not_reach_into_training():
    for module, targets in import_graph().items():
        if module.startswith("udi.models"):
            assert not {t for t in targets if t.startswith(("udi.train", "udi.methods"))}, module


def method_words(source: str) -> list[str]:
    """Identifiers and string literals outside import statements that name a method."""
    import_lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            import_lines |= set(range(node.lineno, node.end_lineno + 1))
    hits = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NAME, tokenize.STRING) and token.start[0] not in import_lines:
            if any(name in token.string.lower() for name in METHOD_NAMES):
                hits.append(f"line {token.start[0]}: {token.string[:60]}")
    return hits


def test_method_word_check_catches_a_branch():
    assert method_words('if cfg["method"] == "bootleg":\n    x = 1\n')
    assert method_words("self.dino_loss = 1\n")
    assert not method_words("from udi.methods import build_method  # udi in a comment\nx = build_method(cfg)\n")


@pytest.mark.parametrize("module", ["train/loop.py"])
def test_training_loop_names_no_method(module):
    hits = method_words((PACKAGE / module).read_text())
    assert not hits, f"udi/{module} names a method: " + "; ".join(hits)
