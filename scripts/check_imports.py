"""Check the import graph of ``src/pneumoscan``: no circles, and no import that points up a layer.

Reads the source with :mod:`ast` (nothing is imported), so it sees imports inside functions too. Layers, from
the bottom; a module may import its own layer and the ones below it:

    0  errors, constants, the package root      5  gate (scope, drift, the reference at run time)
    1  utils, config, pseudonym                 6  inference (no torch in its __init__)
    2  io, metrics                              7  onboarding, dicom_out
    3  preprocessing, result                    8  training, evaluation, worklist, store
    4  models, checkpoint, data                 9  serve, dicom_node, scale (Ray)
                                                10  cli, __main__

    python scripts/check_imports.py            # exit 1 and a list of problems, or exit 0
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "pneumoscan"
LAYERS: list[tuple[str, ...]] = [
    ("errors", "constants", ""),
    ("utils", "config", "pseudonym"),
    ("io", "metrics"),
    ("preprocessing", "result"),
    ("models", "checkpoint", "data"),
    ("gate",),
    ("inference",),
    ("onboarding", "dicom_out"),
    ("training", "evaluation", "worklist", "store"),
    ("serve", "dicom_node", "scale"),
    ("cli", "__main__"),
]


#: The most ``.py`` files allowed directly in the package root (``__init__`` and ``__main__`` included).
MAX_ROOT_MODULES = 10


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``src/pneumoscan``."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any depth of its code)."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != mod and not mod.startswith(target + "."):
                    deps.add(target)
        graph[mod] = deps
    return graph


def layer(mod: str) -> int:
    """The layer of a module: that of its top-level part under the package."""
    top = mod.split(".")[1] if "." in mod else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise KeyError(f"{mod} is in no layer; add it to LAYERS in {Path(__file__).name}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by depth-first search (each as the list of modules, first repeated last)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def root_modules(src: Path = SRC) -> list[Path]:
    """The ``.py`` files directly in ``src/pneumoscan`` (the package root and its ground floor)."""
    return sorted((src / PACKAGE).glob("*.py"))


def problems(src: Path = SRC) -> list[str]:
    """Human-readable problems: circles, upward imports, and more than :data:`MAX_ROOT_MODULES` modules in the
    package root (a purpose gets a package, not another file beside 24 others)."""
    graph = imports(modules(src))
    out = [f"import circle: {' -> '.join(c)}" for c in cycles(graph)]
    roots = root_modules(src)
    if len(roots) > MAX_ROOT_MODULES:
        out.append(f"{len(roots)} modules directly in {src / PACKAGE} (at most {MAX_ROOT_MODULES}): "
                   f"{', '.join(p.name for p in roots)}; group them into packages named by purpose")
    for mod in sorted(graph):
        for dep in sorted(graph[mod]):
            if mod.split(".")[:2] == dep.split(".")[:2]:
                continue  # inside one package: its own business (circles are still caught above)
            if layer(dep) > layer(mod):
                out.append(f"upward import: {mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"{len(found)} problem(s) in the import graph of {SRC / PACKAGE}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
