"""The package's shape: every import runs downward through the wings, and no module
imports itself back through others (README, "How the code is laid out"); `minila.errors` and `minila.user_files` are leaves every wing may use."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minila"
# each wing may import the wings listed for it (and itself, and minila.errors)
MAY_IMPORT = {
    "llama": set(),
    "decoding": {"llama"},
    "speed": {"llama"},
    "lookahead": {"llama", "decoding", "speed"},
    "parallel": {"llama", "decoding", "lookahead"},
    "cli": {"llama", "decoding", "speed", "lookahead", "parallel"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The minila modules `path` imports, at any depth of the file (deferred imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "minila":
            for alias in node.names:  # `from minila.x import y` may name a module y
                child = f"{node.module}.{alias.name}"
                found.add(child if (PACKAGE.parent / child.replace(".", "/")).with_suffix(".py").exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minila"}
    return found


LEAVES = {"minila.errors", "minila.user_files"}  # what every wing may use
MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else None


def test_every_module_lives_in_a_wing_or_is_a_top_level_entry():
    top = {m for m in MODULES if wing(m) is None}
    assert top == {"minila", "minila.errors", "minila.user_files", "minila.generate", "minila.bench", "minila.convert"}


def test_every_import_runs_downward():
    upward = []
    for module, imported in MODULES.items():
        mine = wing(module)
        if mine is None:
            continue
        for target in imported:
            theirs = wing(target)
            if target not in LEAVES and theirs != mine and theirs not in MAY_IMPORT[mine]:
                upward.append(f"{module} imports {target}")
    assert not upward


def test_no_module_imports_itself_back():
    graph = {m: {t for t in targets if t in MODULES and t != "minila"} for m, targets in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import circle: " + " -> ".join(path[path.index(t) :] + [t]) if t in path else t
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
