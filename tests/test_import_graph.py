"""No import circles inside ckdlab, counting imports inside functions too (a lazy import is still a circle)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ckdlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    base = f"{anchor}.{node.module}" if node.module else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()

    def visit(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            else:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_no_import_circles():
    graph = import_graph()
    assert "ckdlab.train" in graph["ckdlab.experiments"]  # the graph sees real imports
    assert not cycles(graph), "import circles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_cycle_finder_finds_a_planted_circle():
    graph = import_graph()
    graph["ckdlab.executors"].add("ckdlab.experiments")  # the circle this project once had
    assert any(set(c) >= {"ckdlab.executors", "ckdlab.experiments"} for c in cycles(graph))
