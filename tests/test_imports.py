"""The package's import graph: layers import downwards only, and no module imports itself back through others.

Walks every module's source (ast, nothing is imported), counting every import: at the top, inside functions and
under `if TYPE_CHECKING:` alike, since each one is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import forwardpass

ROOT = Path(forwardpass.__file__).parent

# folder -> the package's folders and top-level modules it must not import
ABOVE_ENGINE = {"server", "llm", "cli", "bench", "parallel", "ray"}
FORBIDDEN = {
    "gguf": {"tokenizer", "models", "kernels", "engine", "structured", "tools", *ABOVE_ENGINE},
    "tokenizer": {"models", "kernels", "engine", "structured", "tools", *ABOVE_ENGINE},
    "kernels": {"models", "engine", "tokenizer", "structured", "tools", *ABOVE_ENGINE},
    "models": {"engine", "tokenizer", "structured", "tools", *ABOVE_ENGINE},
    "engine": ABOVE_ENGINE,
    "structured": {"models", "kernels", "engine", *ABOVE_ENGINE},
    "tools": {"models", "kernels", "engine", *ABOVE_ENGINE},
    "parallel": {"server", "llm", "cli", "bench", "ray"},
    "server": {"parallel"},  # (its `serve` command hands `--replicas` over to ray/)
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The package's modules that `name` imports (a `from X import y` names X.y where that is a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_downwards_only():
    bad = sorted(
        f"{src} -> {dst}" for src, dsts in GRAPH.items() for dst in dsts if layer(dst) in FORBIDDEN.get(layer(src), ())
    )
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles, state = [], {}  # state: 1 on the stack, 2 done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        stack.append(name)
        for dst in sorted(GRAPH[name]):
            if state.get(dst) == 1:
                cycles.append(" -> ".join(stack[stack.index(dst) :] + [dst]))
            elif dst not in state:
                visit(dst, stack)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])
    # a package's __init__ re-exporting its submodules is not a cycle of its own: skip edges into a parent package
    real = [c for c in cycles if not any(b.startswith(a + ".") for a, b in zip(c.split(" -> "), c.split(" -> ")[1:]))]
    assert not real, "import cycles:\n" + "\n".join(real)


def test_the_walk_sees_the_known_edges():
    assert "forwardpass.models.attention" in GRAPH["forwardpass.models.base"]
    assert "forwardpass.engine.scheduler" in GRAPH["forwardpass.engine.llm_engine"]
