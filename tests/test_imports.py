"""The package's import graph, read from its source with ``ast``: no import circle among onepass's files, and
at most MAX_LAYERS layers of its modules.

Every import counts, those inside functions too (a circle closed at run time is still a circle). A module's
layer is one above the highest module it imports (1 for one that imports nothing of the package); for the
layer count a subpackage (onepass/data/, onepass/search/) is one module, as the issue that set the target
counted them. ``python tests/test_imports.py`` prints the layers and any circle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onepass"
MAX_LAYERS = 8


def modules(package: Path) -> dict[str, Path]:
    """{dotted name: file} of every module of ``package`` (a package is named by its ``__init__.py``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(package: Path) -> dict[str, set[str]]:
    """{module: the modules of ``package`` it imports}. ``from X import y`` imports the module ``X.y`` where
    there is one, else ``X``; the parent packages that Python runs before a module are not counted (else
    every package that imports its own modules would be a circle)."""
    found = modules(package)
    graph = {}
    for name, path in found.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    base = ".".join([*parts[:len(parts) - node.level + 1], *([node.module] if node.module else [])])
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in found else base for a in node.names)
        graph[name] = set()
        for target in targets:
            while target and target not in found:  # `import onepass.data.x.y` names a module, or an attribute
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, without recursion), each sorted,
    in reverse topological order: every component after all those it imports."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: the components of more than one module."""
    return [c for c in components(graph) if len(c) > 1]


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """{module: layer}: 1 for a module importing nothing of ``graph``, else one above the highest module it
    imports; the modules of a circle share one layer."""
    layer = {}
    for component in components(graph):
        below = {dep for module in component for dep in graph[module]} - set(component)
        for module in component:
            layer[module] = 1 + max((layer[dep] for dep in below), default=0)
    return layer


def top_level(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` with each subpackage taken as one module (its files' imports together, less those between
    them); the package's own ``__init__`` stays a module of its own."""
    def unit(name):
        return ".".join(name.split(".")[:2])
    merged = {}
    for module, deps in graph.items():
        merged.setdefault(unit(module), set()).update(unit(d) for d in deps)
    return {module: deps - {module} for module, deps in merged.items()}


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """A chain of imports from a module of the top layer down to layer 1 (for the failure message)."""
    layer = layers(graph)
    chain = [max(sorted(layer), key=layer.get)]
    while layer[chain[-1]] > 1:
        chain.append(next(d for d in sorted(graph[chain[-1]]) if layer[d] == layer[chain[-1]] - 1))
    return chain


# ---- onepass itself ---------------------------------------------------------------------------------------
def test_no_import_circle_in_onepass():
    found = circles(imports(PACKAGE))
    assert not found, "import circles in onepass/: " + "; ".join(" <-> ".join(c) for c in found)


def test_onepass_has_at_most_8_layers():
    graph = top_level(imports(PACKAGE))
    layer = layers(graph)
    assert max(layer.values()) <= MAX_LAYERS, (f"{max(layer.values())} layers (at most {MAX_LAYERS}): "
                                               + " -> ".join(longest_chain(graph)))


# ---- the graph reading, on packages made here --------------------------------------------------------------
def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``root`` with ``files`` ({path inside pkg: source})."""
    for rel, text in {"__init__.py": "", **files}.items():
        (root / "pkg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "pkg" / rel).write_text(text)
    return root / "pkg"


def test_a_circle_closed_inside_a_function_is_found(tmp_path):
    pkg = write_package(tmp_path, {
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .c import thing\n",
        "c.py": "import pkg.a\n",
        "d.py": "from .a import x\n",
    })
    assert circles(imports(pkg)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_a_package_importing_its_own_modules_is_no_circle(tmp_path):
    pkg = write_package(tmp_path, {
        "sub/__init__.py": "from .inner import y\nfrom .helper import h\n",
        "sub/inner.py": "from . import helper\nfrom .helper import h\n",   # helper: a module, not sub's name
        "sub/helper.py": "h = 1\n",
    })
    graph = imports(pkg)
    assert graph["pkg.sub"] == {"pkg.sub.inner", "pkg.sub.helper"}
    assert graph["pkg.sub.inner"] == {"pkg.sub.helper"}
    assert circles(graph) == []


def test_layers_are_counted_from_the_ground_up(tmp_path):
    pkg = write_package(tmp_path, {
        "__init__.py": "VERSION = 1\n",
        "base.py": "import os\n",
        "mid.py": "from .base import X\nfrom . import VERSION\n",       # VERSION: a name of pkg itself
        "top.py": "from . import mid, base\n",
        "sub/__init__.py": "from .inner import y\n",
        "sub/inner.py": "def f():\n    from ..top import z\n",
        "side.py": "import pkg.sub.inner\n",
    })
    graph = imports(pkg)
    assert graph["pkg.mid"] == {"pkg.base", "pkg"} and graph["pkg.side"] == {"pkg.sub.inner"}
    assert layers(graph) == {"pkg": 1, "pkg.base": 1, "pkg.mid": 2, "pkg.top": 3, "pkg.sub.inner": 4,
                             "pkg.sub": 5, "pkg.side": 5}
    units = top_level(graph)    # the subpackage as one module: pkg.side imports pkg.sub
    assert units["pkg.side"] == {"pkg.sub"} and units["pkg.sub"] == {"pkg.top"}
    assert layers(units) == {"pkg": 1, "pkg.base": 1, "pkg.mid": 2, "pkg.top": 3, "pkg.sub": 4, "pkg.side": 5}
    assert longest_chain(units) == ["pkg.side", "pkg.sub", "pkg.top", "pkg.mid", "pkg"]


def test_modules_of_a_circle_share_a_layer_above_what_they_import(tmp_path):
    pkg = write_package(tmp_path, {"a.py": "from . import b, c\n", "b.py": "from . import a\n", "c.py": "",
                                   "d.py": "from . import b\n"})
    assert layers(imports(pkg)) == {"pkg": 1, "pkg.c": 1, "pkg.a": 2, "pkg.b": 2, "pkg.d": 3}



def test_planning_imports_no_torch():
    """What the Snakefile imports to plan a study (workflow/rules/common.smk, figures.smk) leaves torch
    unimported (README "Planning": torch alone would add about 185 MB to every plan)."""
    code = ("import sys; from onepass import (appendix, budget, catalog, devices, figures, heatmaps, jobs, paths, "
            "planned, study, paper_figures, paper_studies); from onepass.config_text import typed; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr

if __name__ == "__main__":
    graph = imports(PACKAGE)
    units = top_level(graph)
    layer = layers(units)
    for module in sorted(layer, key=lambda m: (-layer[m], m)):
        print(layer[module], module)
    print(f"{len(units)} modules in {max(layer.values())} layers; import circles: {circles(graph) or 'none'}")
