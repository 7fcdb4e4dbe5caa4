"""The package's shape: only the public modules are public; no import circle anywhere in kdlib (counting
imports inside functions too); the run config at the bottom: kdlib._config imports only plain-Python modules
below it (a config validates without torch). Every kdlib import is at a module's top."""
from __future__ import annotations

import ast
from pathlib import Path

KDLIB = Path(__file__).resolve().parent.parent / "kdlib"


def import_graph() -> dict[str, set[str]]:
    """module -> the kdlib modules it imports, at the top or inside a function."""
    modules = {}
    for path in KDLIB.rglob("*.py"):
        name = ".".join(path.relative_to(KDLIB.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdlib"):
                targets = [f"{node.module}.{a.name}" for a in node.names]  # a submodule, `from kdlib import x`
                # the package's own __init__ imports none; `from kdlib.notebook import plots` imports a submodule
                targets += [] if node.module == "kdlib" or all(t in modules for t in targets) else [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def reachable(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_kdlib():
    assert cycles(import_graph()) == []


def test_kdlib_imports_its_own_modules_at_the_top():
    """Every `from kdlib... import` sits at a module's top (none hidden in a function to dodge a circle), but
    in the command line, whose --help and config errors answer without loading torch (tests/test_bad_input.py)."""
    hidden = []
    for path in (p for p in KDLIB.rglob("*.py") if p.name != "_cli.py"):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        hidden += [f"{path.name}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module and n.module.startswith("kdlib") and id(n) not in top]
    assert hidden == []


def test_the_run_config_sits_below_everything_that_runs():
    graph = import_graph()
    below = reachable(graph, "kdlib._config")
    assert below <= {"kdlib._names", "kdlib._usertask", "kdlib._io", "kdlib._metrics"}, below  # and no torch
    for upper in ("kdlib._experiments", "kdlib._recipes", "kdlib._runcache", "kdlib._paper", "kdlib._train"):
        assert "kdlib._config" in reachable(graph, upper) and upper not in below
    assert "kdlib._train" not in reachable(graph, "kdlib._evaluate")  # evaluation needs no trainer


PUBLIC_MODULES = {"kdlib", "kdlib.__main__", "kdlib.integrations", "kdlib.integrations.trl", "kdlib.notebook",
                  "kdlib.notebook.claims", "kdlib.notebook.figures", "kdlib.notebook.grids", "kdlib.notebook.measure",
                  "kdlib.notebook.plots", "kdlib.notebook.tables"}


def test_every_module_but_the_public_ones_is_private():
    """docs/api.md documents `kdlib`, the notebooks' toolkit `kdlib.notebook` and `kdlib.integrations.trl`;
    every other module is `_`-prefixed (or inside one), so that nobody imports it thinking it stable."""
    modules = set(import_graph())
    public = {m for m in modules if not any(part.startswith("_") for part in m.split(".")[1:] if part != "__main__")}
    assert public == PUBLIC_MODULES, public ^ PUBLIC_MODULES
    assert "kdlib._samplers.decoder" in modules and "kdlib._train" in modules  # the finder sees private ones


def private_imports(source: str) -> list[str]:
    """The kdlib modules or names behind a `_` that `source` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [n for n in names if n.startswith("kdlib") and any(p.startswith("_") for p in n.split(".")[1:])]
    return found


def test_the_private_import_finder_finds_planted_ones():
    assert private_imports("from kdlib import _train as train\nimport kdlib._samplers.decoder") == \
        ["kdlib._train", "kdlib._samplers.decoder"]
    assert private_imports("from kdlib import notebook as knb, run\nfrom kdlib.notebook import plots") == []


def test_the_notebooks_import_only_the_public_surface():
    """A notebook cell a user adapts reaches kdlib through `kdlib`, `kdlib.notebook` and `kdlib.integrations`."""
    import json

    private = []
    for nb in sorted((KDLIB.parent / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                private += [f"{nb.name}: {n}" for n in private_imports("".join(cell["source"]))]
    assert private == []
