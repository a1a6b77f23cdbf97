"""The architecture's rules, checked: import-linter's contracts (pyproject.toml), no import
cycle among the project's modules, no use of another module's private names outside tests.

These read the source only (no etcd, no lab): part of the fast suite.
"""

from __future__ import annotations

import ast
import functools
import gc
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fleetd", "fleetctl", "fleetlab")


@pytest.fixture(scope="module", autouse=True)
def _forget_the_parses():
    """The caches below hold every file's syntax tree (some 600,000 objects): dropped when the
    module is done, or every later full garbage collection of the pytest-xdist worker walks them
    and its exit frees them at the fast loop's end. While the module runs, the cyclic garbage
    collector is off: allocating those trees set off full collections that walked them again and
    again (1.1-1.6 of the module's ~5.5 CPU-s), and syntax trees hold no reference cycles (they
    are freed by their reference counts when the caches drop them; what else the module leaves
    in cycles is collected when the collector is on again)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        for cached in (_contracts_kept, _parsed, _nodes, _module_path, _exports):
            cached.cache_clear()
        if was_enabled:
            gc.enable()


def _contract_ids() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [c["id"] for c in config["tool"]["importlinter"]["contracts"]]


def _lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports not found: install the test extras (pip install -e '.[test]')")
    return found


def test_every_contract_has_a_unique_id():
    ids = _contract_ids()
    assert len(ids) == len(set(ids)) >= 5


@functools.cache
def _contracts_kept() -> dict[str, bool]:
    """Contract id -> kept, from one import-linter run over every contract (its Python API, in
    this process: the graph is built once, not once per contract in a `lint-imports` each)."""
    from importlinter import configuration
    from importlinter.application import use_cases

    configuration.configure()
    use_cases._register_built_in_contract_types()  # what lint_imports() does before create_report()
    names = {c["name"]: c["id"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}
    sys.path.insert(0, str(ROOT))
    try:
        report = use_cases.create_report(use_cases.read_user_options(str(ROOT / "pyproject.toml")), cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    assert not report.could_not_run, f"import-linter could not run: {report.invalid_contract_options}"
    return {names[contract.name]: check.kept for contract, check in report.get_contracts_and_checks()}


@pytest.mark.parametrize("contract", _contract_ids())
def test_import_contract_kept(contract):
    if _contracts_kept()[contract]:
        return
    run = subprocess.run([_lint_imports(), "--no-cache", "--contract", contract], cwd=ROOT,  # its own report
                         capture_output=True, text=True, timeout=300)
    pytest.fail(f"import-linter contract {contract} broken (lint-imports exit {run.returncode}):\n{run.stdout}\n{run.stderr}")


@functools.cache
def _parsed(source: str, filename: str) -> ast.Module:
    """One parse of each file for the scans below (private names, pyflakes, imports, exports,
    test fixtures): they only read the tree (pyflakes adds attributes of its own to the nodes).

    CPython 3.11.7 keeps the AST constructor's recursion depth in per-interpreter state, so a
    parse in another thread of the process can make this one fail with a spurious
    "AST constructor recursion depth mismatch" SystemError (gh-106905, fixed in 3.11.8; seen
    once under load): such a parse is tried again, any other error is the file's."""
    for attempt in range(3):
        try:
            return ast.parse(source, filename)
        except SystemError as error:
            if "recursion depth mismatch" not in str(error) or attempt == 2:
                raise
    raise AssertionError("the last attempt returns or raises")


@functools.cache
def _nodes(source: str, filename: str) -> tuple[ast.AST, ...]:
    """Every node of the file's tree, in `ast.walk`'s order: walked once for the four scans
    below (private names, own names, imports, test fixtures), not once per scan."""
    return tuple(ast.walk(_parsed(source, filename)))


def _graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(ROOT))
    try:
        return grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    finally:
        sys.path.remove(str(ROOT))


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of a directed graph (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(component)
    return found


def test_strongly_connected_finds_cycles():
    """The cycle finder itself: a test that can fail."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_project_modules():
    graph = _graph()
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = strongly_connected(edges)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


# --- private names -----------------------------------------------------------------------------

def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


#: Private-looking names that are documented public API of the standard library.
STDLIB_PRIVATE_API = {("os", "_exit"), ("sys", "_getframe")}


def _own_private_names(nodes: tuple[ast.AST, ...]) -> set[str]:
    """Private names a file defines itself (functions, classes, attributes it assigns): using
    them on other objects of its own classes is the module's own business. `nodes`: the file's
    (_nodes)."""
    own = set()
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls"):
                        own.add(sub.attr)
                    elif isinstance(sub, ast.Name):
                        own.add(sub.id)
    return {name for name in own if _is_private(name)}


# namedtuple's public methods carry an underscore only to keep clear of field names
NAMEDTUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})


def private_uses(source: str, filename: str = "<source>") -> list[str]:
    """`x._name` where x is not self/cls/super() and `_name` is not defined in this file, and
    `from m import _name` / `import m._name`: each as "file:line: text"."""
    found = []
    nodes = _nodes(source, filename)
    own = _own_private_names(nodes)
    for node in nodes:
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and (base.id in ("self", "cls") or (base.id, node.attr) in STDLIB_PRIVATE_API):
                continue
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            if node.attr in own or node.attr in NAMEDTUPLE_API:
                continue
            found.append(f"{filename}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_is_private(part) for part in alias.name.split(".")[1:]):
                    found.append(f"{filename}:{node.lineno}: import {alias.name}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


def test_private_uses_detects():
    assert private_uses("self._a; cls._b; super()._c; os._exit(0)\n") == []
    assert private_uses("class A:\n    def _own(self): pass\nA()._own()\n") == []  # the file's own
    assert private_uses("x._theirs = 1\n") == ["<source>:1: ._theirs"]  # setting one is a use too
    assert private_uses("other._a\nfrom m import _b\nimport m._c\n") == [
        "<source>:1: ._a", "<source>:2: from m import _b", "<source>:3: import m._c"]


#: Modules allowed to use other code's private names: the one module that adapts aetcd's
#: internals (its names are checked by tests/unit/test_aetcd_compat.py).
PRIVATE_ALLOWED = {"fleetd/registry/_aetcd_compat.py"}


def test_no_module_uses_another_modules_private_names():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in PRIVATE_ALLOWED:
                continue
            found += private_uses(path.read_text(), rel)
    assert not found, "private names used across modules:\n" + "\n".join(found)


# --- the test folders --------------------------------------------------------------------------

ETCD_FIXTURES = {"etcd_server", "etcd_settings", "registry"}
LAB_FIXTURES = {"lab", "lab_factory", "fleet"}


def _fixtures_used(path: Path) -> set[str]:
    used = set()
    for node in _nodes(path.read_text(), path.relative_to(ROOT).as_posix()):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            used.update(a.arg for a in node.args.args + node.args.kwonlyargs)
        elif isinstance(node, ast.Attribute) and node.attr == "lab" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "mark":
            used.add("lab")  # pytest.mark.lab
    return used


def test_unit_tests_need_neither_etcd_nor_a_lab():
    """tests/unit is the folder without markers: its tests must not take etcd or lab fixtures
    (those belong in tests/etcd and tests/lab, whose conftest markers `-m` selects on)."""
    wrong = {}
    for path in sorted((ROOT / "tests" / "unit").glob("test_*.py")):
        found = _fixtures_used(path) & (ETCD_FIXTURES | LAB_FIXTURES)
        if found:
            wrong[path.name] = sorted(found)
    assert not wrong, f"tests/unit modules that need etcd or a lab (move them): {wrong}"
    etcd_users = [p.name for p in (ROOT / "tests" / "etcd").glob("test_*.py") if _fixtures_used(p) & ETCD_FIXTURES]
    assert len(etcd_users) >= 5  # the scan sees fixtures at all


# --- pyflakes: undefined names, redefined functions ---------------------------------------------

#: pyflakes' findings that are bugs, not style: a name used but never bound (a NameError waiting
#: for its code path), a function, method or import bound again before any use of the first.
FLAKES = ("UndefinedName", "UndefinedLocal", "UndefinedExport", "RedefinedWhileUnused")


def flakes(source: str, filename: str = "<source>") -> list[str]:
    from pyflakes.checker import Checker

    checker = Checker(_parsed(source, filename), filename=filename)
    found = [m for m in checker.messages if type(m).__name__ in FLAKES]
    return [str(m) for m in sorted(found, key=lambda m: (m.lineno, m.col))]


def test_flakes_detects():
    assert flakes("def f():\n    return g()\n") == ["<source>:2:12: undefined name 'g'"]
    assert flakes("class A:\n    def m(self): pass\n    def m(self): pass\n") == [
        "<source>:3:5: redefinition of unused 'm' from line 2"]
    assert flakes("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ssl\n"
                  "def f() -> 'ssl.SSLContext': ...\n") == []


def _project_files() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def test_pyflakes_finds_no_undefined_or_redefined_name():
    found = []
    for path in _project_files():
        found += flakes(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not found, "pyflakes:\n" + "\n".join(found)


# --- every import of a project name resolves ----------------------------------------------------

@functools.cache
def _module_path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _bound_at_top(body: list[ast.stmt]) -> set[str]:
    """Names a module binds at its top level (into if/try/with blocks, not into functions)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        for block in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names |= _bound_at_top(getattr(node, block, []) or [])
    return names


@functools.cache
def _exports(module: str) -> frozenset[str] | None:
    """What `from module import x` may name: its top-level names and submodules; None if the
    module answers any name (a module-level __getattr__)."""
    path = _module_path(module)
    assert path is not None
    names = _bound_at_top(_parsed(path.read_text(), path.relative_to(ROOT).as_posix()).body)
    if "__getattr__" in names:
        return None
    if path.name == "__init__.py":
        names |= {p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir()
                                                               if (p / "__init__.py").is_file()}
    return frozenset(names)


def _absolute(node: ast.ImportFrom, filename: str) -> str:
    if not node.level:
        return node.module or ""
    parts = filename.removesuffix(".py").split("/")
    package = parts[:-1]  # a module's package; for __init__.py its own folder
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


#: "module:attribute" references in strings (fleetctl's lazy command table, entry points)
REFERENCE = re.compile(r"^((?:fleetd|fleetctl|fleetlab)(?:\.\w+)*):(\w+)$")


def unresolved_imports(source: str, filename: str) -> list[str]:
    """Imports of project modules (at any depth, lazy ones too) and "module:attr" strings that
    name a module or a name that does not exist: each as "file:line: what"."""
    found = []

    def check(line: int, module: str, names: list[str]) -> None:
        if _module_path(module) is None:
            found.append(f"{filename}:{line}: no module {module}")
            return
        exports = _exports(module)
        for name in names:
            if exports is not None and name != "*" and name not in exports:
                found.append(f"{filename}:{line}: {module} has no {name}")

    for node in _nodes(source, filename):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, filename)
            if module.split(".")[0] in PACKAGES:
                check(node.lineno, module, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    check(node.lineno, alias.name, [])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and REFERENCE.match(node.value):
            module, name = REFERENCE.match(node.value).groups()
            check(node.lineno, module, [name])
    return found


def test_unresolved_imports_detects():
    ok = "from fleetd.model import Unit\nfrom fleetd import model\nimport fleetd.unit.file\nX = 'fleetctl.cli:main'\n"
    assert unresolved_imports(ok, "fleetd/x.py") == []
    assert unresolved_imports("from .model import Unit\nfrom .unit.file import UnitFile\n", "fleetd/x.py") == []
    assert unresolved_imports("from fleetd.model import Nope\n", "fleetd/x.py") == [
        "fleetd/x.py:1: fleetd.model has no Nope"]
    assert unresolved_imports("def f():\n    from fleetd.nope import x\n", "fleetd/x.py") == [
        "fleetd/x.py:2: no module fleetd.nope"]
    assert unresolved_imports("C = {'stop': 'fleetctl.commands.units:stopp'}\n", "fleetctl/commands/__init__.py") == [
        "fleetctl/commands/__init__.py:1: fleetctl.commands.units has no stopp"]
    assert unresolved_imports("from .. import model\n", "fleetd/unit/x.py") == []


def test_every_project_import_and_command_reference_resolves():
    found = []
    for path in _project_files():
        found += unresolved_imports(path.read_text(), path.relative_to(ROOT).as_posix())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    found += unresolved_imports("\n".join(repr(target) for target in scripts.values()), "pyproject.toml")
    assert not found, "imports that do not resolve:\n" + "\n".join(found)


# --- small fleetctl modules ---------------------------------------------------------------------

FLEETCTL_MAX_LINES = 400


def test_no_fleetctl_module_is_over_400_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in sorted((ROOT / "fleetctl").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > FLEETCTL_MAX_LINES}
    assert not long, f"fleetctl modules over {FLEETCTL_MAX_LINES} lines (split them by family): {long}"
