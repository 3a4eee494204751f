"""One-way layering of `medvtc`, checked on the source with `ast` (nothing is imported).

The rules (docs/architecture.md, "The layering rule"):

(a) `medvtc.common` imports only `medvtc.common`;
    `medvtc.datasets` imports only `medvtc.common` and `medvtc.datasets`;
(b) an application (`medvtc.medical.ct_report`, `medvtc.medical.tokenseg`, any other
    `medvtc.medical.<x>`, `medvtc.robotics`, `medvtc.compression`) imports only itself,
    `medvtc.common` and `medvtc.datasets`: never another application, nor the command line
    (`medvtc.cli`, `medvtc.tasks`);
(c) only `medvtc/tasks.py` imports an application's `task` module;
(d) no import cycles.

Every import counts: module level, inside functions and methods, under `if TYPE_CHECKING:`,
`import x`, `from x import y` (an import of `x.y` when `x.y` is a module, else of `x`), and
relative imports, resolved against the importing module's package. Not counted: the implicit
import of a module's parent packages, `importlib.import_module` with computed names (the
`lazy_exports` maps, the compressor plug-in discovery) and `module:Class` registry strings
(`medvtc.tasks`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "medvtc"
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / PACKAGE


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (inside the package)
    path: Path
    line: int

    def where(self, root: Path | None = None) -> str:
        path = self.path
        if root is not None:
            try:
                path = self.path.relative_to(root.parent)
            except ValueError:
                pass
        return f"{path}:{self.line}"

    def describe(self, root: Path | None = None) -> str:
        return f"{self.where(root)}: {self.importer} imports {self.imported}"


def collect_modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every `.py` under `root` (the folder of the package `package`)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def find_imports(root: Path, package: str = PACKAGE) -> tuple[dict[str, Path], list[Import]]:
    """Every import, at any depth of the syntax tree, of a module of `package` by one of its modules."""
    modules = collect_modules(root, package)
    imports: list[Import] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve_relative(name, is_package, node.level, node.module) if node.level else (node.module or "")
                )
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in dict.fromkeys(targets):
                if _inside(target, package) and target != name:
                    imports.append(Import(name, target, path, node.lineno))
    return modules, imports


def application_of(module: str, package: str = PACKAGE) -> str | None:
    """The application a module belongs to, or None (common, datasets, the top level)."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "medical":
        return ".".join(parts[:3])
    if len(parts) >= 2 and parts[1] in ("robotics", "compression"):
        return ".".join(parts[:2])
    return None


def is_application_task(module: str, package: str = PACKAGE) -> bool:
    return application_of(module, package) is not None and module.rsplit(".", 1)[-1] == "task"


def layering_violations(imports: list[Import], package: str = PACKAGE, root: Path | None = None) -> list[str]:
    common, datasets = f"{package}.common", f"{package}.datasets"
    tasks_registry = f"{package}.tasks"
    out: list[str] = []
    for imp in imports:
        src, dst = imp.importer, imp.imported
        src_app, dst_app = application_of(src, package), application_of(dst, package)
        if dst == package:
            pass  # the bare package holds only __version__
        elif _inside(src, common):
            if not _inside(dst, common):
                out.append(f"{imp.describe(root)}: {common} may import only {common}")
        elif _inside(src, datasets):
            if not (_inside(dst, common) or _inside(dst, datasets)):
                out.append(f"{imp.describe(root)}: {datasets} may import only {common} and {datasets}")
        elif src_app is not None:
            if dst_app is not None and dst_app != src_app:
                out.append(f"{imp.describe(root)}: application {src_app} imports another application, {dst_app}")
            elif dst_app is None and not (
                _inside(dst, common) or _inside(dst, datasets) or src_app.startswith(dst + ".")
            ):
                out.append(f"{imp.describe(root)}: application {src_app} may import only itself, {common} and {datasets}")
        if is_application_task(dst, package) and src != tasks_registry:
            out.append(f"{imp.describe(root)}: only {tasks_registry} imports an application's task module")
    return out


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    return [start]


def import_cycles(imports: list[Import], root: Path | None = None) -> list[str]:
    """One shortest cycle per strongly connected component, each edge with its file:line."""
    graph: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Import] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set()).add(imp.imported)
        graph.setdefault(imp.imported, set())
        first.setdefault((imp.importer, imp.imported), imp)
    out = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        cycle = _shortest_cycle(graph, component[0], set(component))
        edges = "\n".join(
            f"    {first[a, b].describe(root)}" for a, b in zip(cycle, cycle[1:])
        )
        rest = "" if len(component) == len(cycle) - 1 else f" (component: {', '.join(component)})"
        out.append(f"import cycle {' -> '.join(cycle)}{rest}:\n{edges}")
    return out


def check(root: Path, package: str = PACKAGE, allow: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    _, imports = find_imports(root, package)
    imports = [imp for imp in imports if (imp.importer, imp.imported) not in allow]
    return layering_violations(imports, package, root) + import_cycles(imports, root)


# -- the package itself ------------------------------------------------------------------------


def test_medvtc_layering():
    problems = check(PACKAGE_ROOT)
    assert not problems, "layering of medvtc broken:\n" + "\n".join(problems)


def test_the_walk_sees_the_package():
    modules, imports = find_imports(PACKAGE_ROOT)
    assert {"medvtc.tasks", "medvtc.cli", "medvtc.common.trainer", "medvtc.compression.task"} <= set(modules)
    registry = {imp.imported for imp in imports if imp.importer == "medvtc.tasks"}
    assert "medvtc.common.task" in registry


# -- the checker, on synthetic trees -----------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return root


def test_checker_reports_common_importing_datasets(tmp_path):
    root = _tree(tmp_path, {
        "common/a.py": "import os\n\ndef f():\n    from pkg.datasets import grids\n    return grids\n",
        "datasets/grids.py": "from pkg.common import b\n",
        "common/b.py": "",
    })
    problems = check(root, "pkg")
    assert len(problems) == 1, problems
    assert "pkg/common/a.py:4: pkg.common.a imports pkg.datasets.grids" in problems[0]
    assert "pkg.common may import only pkg.common" in problems[0]


def test_checker_resolves_relative_and_submodule_imports(tmp_path):
    root = _tree(tmp_path, {
        "common/a.py": "from ..datasets import grids\n",
        "common/sub/c.py": "from ... import datasets\nfrom .. import b\n",
        "common/b.py": "",
        "datasets/grids.py": "",
    })
    modules, imports = find_imports(root, "pkg")
    assert {(i.importer, i.imported) for i in imports} == {
        ("pkg.common.a", "pkg.datasets.grids"),
        ("pkg.common.sub.c", "pkg.datasets"),
        ("pkg.common.sub.c", "pkg.common.b"),
    }
    problems = check(root, "pkg")
    assert len(problems) == 2 and all("pkg.common may import only pkg.common" in p for p in problems), problems


def test_checker_reports_a_two_module_cycle(tmp_path):
    root = _tree(tmp_path, {
        "common/a.py": "from pkg.common.b import g\n",
        "common/b.py": "def g():\n    from pkg.common import a\n    return a\n",
    })
    problems = check(root, "pkg")
    assert len(problems) == 1, problems
    assert "import cycle pkg.common.a -> pkg.common.b -> pkg.common.a" in problems[0]
    assert "pkg/common/a.py:1" in problems[0] and "pkg/common/b.py:2" in problems[0]
    assert check(root, "pkg", allow=frozenset({("pkg.common.b", "pkg.common.a")})) == []


def test_checker_counts_type_checking_imports(tmp_path):
    root = _tree(tmp_path, {
        "common/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.robotics import policy\n",
        "robotics/policy.py": "",
    })
    problems = check(root, "pkg")
    assert len(problems) == 1 and "pkg/common/a.py:3" in problems[0], problems


def test_checker_reports_applications_and_task_modules(tmp_path):
    root = _tree(tmp_path, {
        "medical/ct_report/task.py": "from pkg.medical.tokenseg.model import Net\n",
        "medical/tokenseg/model.py": "",
        "medical/tokenseg/task.py": "",
        "robotics/task.py": "",
        "robotics/rollout.py": "from pkg.datasets import x\nfrom pkg.common import y\nfrom pkg import tasks\n",
        "datasets/x.py": "from pkg.robotics import rollout\n",
        "common/y.py": "",
        "cli.py": "from pkg.robotics.task import T\n",
        "tasks.py": "import pkg.robotics.task\nfrom pkg.medical.tokenseg import task\n",
    })
    problems = "\n".join(check(root, "pkg"))
    assert "pkg.medical.ct_report.task imports pkg.medical.tokenseg.model: application pkg.medical.ct_report imports another application, pkg.medical.tokenseg" in problems
    assert "pkg.robotics.rollout imports pkg.tasks: application pkg.robotics may import only itself" in problems
    assert "pkg.datasets.x imports pkg.robotics.rollout: pkg.datasets may import only" in problems
    assert "pkg/cli.py:1: pkg.cli imports pkg.robotics.task: only pkg.tasks imports an application's task module" in problems
    assert "tasks.py:1" not in problems and "tasks.py:2" not in problems
    assert "import cycle" in problems
    assert "pkg.datasets.x -> pkg.robotics.rollout -> pkg.datasets.x" in problems


@pytest.mark.parametrize("src", ["import pkg.common.b\n", "from pkg.common import b\n", "from . import b\n", "from .b import g\n"])
def test_checker_sees_every_import_form(tmp_path, src):
    root = _tree(tmp_path, {"common/a.py": src, "common/b.py": "def g(): pass\n"})
    _, imports = find_imports(root, "pkg")
    assert [(i.importer, i.imported, i.line) for i in imports] == [("pkg.common.a", "pkg.common.b", 1)]
