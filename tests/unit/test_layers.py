"""The house's import rule, read from the code (docs/ARCHITECTURE.md, "Layers").

Lower layers never import higher ones, the harness never imports a story
(it finds them through kamleak.harness.registry), and no two modules of the
harness import each other, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "harness"

# Rank of each part of harness/: a module may import its own rank or lower.
RANK = {
    "errors": 0, "knowledge": 0, "progress": 0, "wait": 0, "registry": 0,
    "stack": 1, "sip": 1, "probes": 1,
    "judging": 2,
    "reporting": 3,
    "tools": 4, "plugin": 4,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "kamleak." + ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every kamleak module PATH imports, wherever the import statement stands."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kamleak.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not base.startswith("kamleak."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _exists(sub) else base)
    return found


def _exists(module: str) -> bool:
    parts = module.split(".")[1:]
    p = ROOT.joinpath(*parts)
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _part(module: str) -> str:
    return module.split(".")[2]  # kamleak.harness.<part>...


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(HARNESS.rglob("*.py"))}


def test_every_part_of_the_harness_has_a_rank():
    parts = {p.stem if p.is_file() else p.name for p in HARNESS.iterdir()
             if p.name != "__init__.py" and not p.name.startswith((".", "__"))}
    assert parts == set(RANK), "a new part of harness/: give it a rank here and in docs/ARCHITECTURE.md"


def test_the_harness_never_imports_a_story():
    offenders = sorted(f"{m} -> {t}" for m, ts in _graph().items() for t in ts
                       if t.startswith("kamleak.scenarios"))
    assert offenders == []


def test_lower_layers_never_import_higher_ones():
    offenders = []
    for module, targets in _graph().items():
        if module == "kamleak.harness":
            continue
        for t in targets:
            if t.startswith("kamleak.harness.") and RANK[_part(t)] > RANK[_part(module)]:
                offenders.append(f"{module} -> {t}")
    assert sorted(offenders) == []


def test_no_import_cycles_in_the_harness():
    graph = {m: {t for t in ts if t in _graph_keys()} for m, ts in _graph().items()}
    cycles = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            # a package's __init__ re-exporting its own modules is not a cycle
            if m.startswith(t + ".") or t.startswith(m + "."):
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def _graph_keys() -> set[str]:
    return {_module_name(p) for p in HARNESS.rglob("*.py")}
