"""The package's structure, read from its source with ``ast``: modules talk through public names,
imports at module level form no circle, and the data path (model -> training -> data -> plan ->
core) never climbs back."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "fastnn"

# Private names another object may be asked for, each with the reason. Empty: nothing needs one.
ALLOWED_PRIVATE_ATTRIBUTES = {}


def _modules():
    """{dotted module name: (path, parsed tree)} for every .py file of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


MODULES = _modules()


def _is_package(name):
    return name in MODULES and MODULES[name][0].name == "__init__.py"


def _is_submodule(package, name):
    """Whether ``package.name`` is a module: a .py file, a package, or a compiled extension."""
    d = PKG.parent.joinpath(*package.split("."))
    return (f"{package}.{name}" in MODULES or (d / f"{name}.pyx").exists()
            or any(d.glob(f"{name}.*.so")) or any(d.glob(f"{name}.*.pyd")))


def _base(module, level):
    """The package a relative import of ``level`` in ``module`` starts from."""
    parts = module.split(".")
    if not _is_package(module):
        parts = parts[:-1]
    return ".".join(parts[:len(parts) - level + 1])


def _source(module, node):
    """The module an ``ImportFrom`` node in ``module`` imports from, as a dotted name."""
    if not node.level:
        return node.module or ""
    base = _base(module, node.level)
    return f"{base}.{node.module}" if node.module else base


def _imports(module, tree, top_level_only):
    """[(imported module, line)] of ``module``'s fastnn imports; ``top_level_only`` skips those
    inside functions (they run on call, not on import)."""
    out = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.ImportFrom):
                src = _source(module, child)
                if src.split(".")[0] == "fastnn":
                    for a in child.names:
                        sub = f"{src}.{a.name}"
                        out.append((sub if sub in MODULES else src, child.lineno))
            elif isinstance(child, ast.Import):
                out.extend((a.name, child.lineno) for a in child.names if a.name.split(".")[0] == "fastnn")
            visit(child)

    visit(tree)
    return [(m, line) for m, line in out if m in MODULES]


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_source_is_found():
    assert {"fastnn.model", "fastnn.training", "fastnn.data", "fastnn.data.validation"} <= set(MODULES)


def _private_imports(module, tree):
    """``from fastnn.x import _y`` in ``module``, where ``_y`` is a private name rather than a module
    (a private module such as fastnn._plan or fastnn._core._engine is a module, not a private name)."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _source(module, node)
            if src.split(".")[0] == "fastnn":
                bad += [f"{node.lineno}: from {src} import {a.name}" for a in node.names
                        if _private(a.name) and not _is_submodule(src, a.name)]
    return bad


def _reach_ins(tree):
    """``obj._x`` in ``tree`` (a call, a read or a write) where obj is not self or cls."""
    found = [node for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and _private(node.attr)
             and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
             and ast.unparse(node) not in ALLOWED_PRIVATE_ATTRIBUTES]
    return [f"{n.lineno}: {ast.unparse(n)}" for n in sorted(found, key=lambda n: (n.lineno, n.col_offset))]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(module):
    bad = _private_imports(module, MODULES[module][1])
    assert not bad, f"{module}: import the public name instead:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reaches_into_another_objects_private_attributes(module):
    bad = _reach_ins(MODULES[module][1])
    assert not bad, f"{module}: use (or add) a public name of the package-internal interface:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_forbid():
    tree = ast.parse("from .io import _atomic_write, save_model\nfrom ._core import _engine\n"
                     "def f(self, model):\n    self._ok()\n    model._run()\n    return model._plan\n")
    assert _private_imports("fastnn.cli", tree) == ["1: from fastnn.io import _atomic_write"]
    assert _reach_ins(tree) == ["5: model._run", "6: model._plan"]


def _cycle(graph):
    """One cycle of ``graph`` ({node: {node}}) as a list of nodes, or None."""
    state, stack = {}, []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = dfs(v)
                if found:
                    return found
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state:
            found = dfs(u)
            if found:
                return found
    return None


def test_no_import_circle_at_module_level():
    graph = {m: {dep for dep, _ in _imports(m, tree, top_level_only=True)
                 # a package is imported before its modules; that edge is Python's, not a design choice
                 if not m.startswith(dep + ".")} - {m}
             for m, (_, tree) in MODULES.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


# the data path, top to bottom: a module may import those below it, never those above
DATA_PATH = [("fastnn.model",), ("fastnn.training", "fastnn.distributed"),
             tuple(m for m in MODULES if m == "fastnn.data" or m.startswith("fastnn.data.")), ("fastnn._plan",)]


@pytest.mark.parametrize("level", range(1, len(DATA_PATH)))
def test_the_data_path_never_climbs_back(level):
    above = {m for group in DATA_PATH[:level] for m in group}
    bad = [f"{m} imports {dep} (line {line})" for m in DATA_PATH[level]
           for dep, line in _imports(m, MODULES[m][1], top_level_only=False) if dep in above]
    assert not bad, "\n".join(bad)
