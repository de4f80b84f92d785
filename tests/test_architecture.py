"""The import rules of docs/architecture.md, checked on the real tree.

Data flows one way: receive (``dicom_node``) -> complete and route (``workflow``) -> queue
(``workers``) -> model (``model``) -> SR (``sr_writer``) -> deliver (``sender``), on a common ground
(``common``) and under the operator surfaces (``gateway``: CLI, API, pages) that nothing imports.
Every ``import`` statement counts, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each top-level package and the project packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "dicom_node": {"common"},
    "workflow": {"common"},
    "model": {"common"},
    "sr_writer": {"common", "model"},
    "sender": {"common", "workflow", "sr_writer", "dicom_node"},
    "workers": {"common", "workflow", "sender", "model", "sr_writer"},
    "evaluation": {"common", "model", "dicom_node"},  # MedRegA's evaluation, run offline (reads headers)
    "gateway": {"common", "dicom_node", "workflow", "sender", "workers", "model", "sr_writer", "evaluation"},
    "migrations": {"common"},
}
#: The one module of another stage that ``sender`` uses: the TLS contexts of the node (PS3.15 B.1).
SENDER_FROM_DICOM_NODE = {"dicom_node.tls"}
#: What the listener (the Storage SCP process) must never load: it only receives and records.
LISTENER_FORBIDDEN = ("torch", "transformers", "celery", "highdicom")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of ``path``.

    ``from package import name`` counts ``package.name`` when that is a module of the tree. Imports
    under ``if TYPE_CHECKING:`` are not run and do not count.
    """
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, top_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append((target, top_level))
                found.extend((f"{target}.{alias.name}", top_level) for alias in child.names)
            inner = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


def _tree() -> dict[str, list[tuple[str, bool]]]:
    modules: dict[str, list[tuple[str, bool]]] = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = _imports(path)
    return modules


MODULES = _tree()


def _project_edges(top_level_only: bool) -> dict[str, set[str]]:
    """module -> project modules it imports (a name that is not a module is dropped)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, imports in MODULES.items():
        for target, top_level in imports:
            if top_level_only and not top_level:
                continue
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(edges[nxt])))
    return None


def test_the_walk_sees_the_tree() -> None:
    """Guards the test itself: the walk finds modules and their imports."""
    assert "dicom_node.scp" in MODULES and "gateway.cli.commands" in MODULES
    assert "common.settings" in _project_edges(top_level_only=True)["dicom_node.scp"]


def test_no_import_cycle_between_modules() -> None:
    assert _cycle(_project_edges(top_level_only=True)) is None


def test_no_import_cycle_between_packages_counting_lazy_imports() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in _project_edges(top_level_only=False).items():
        packages.setdefault(module.split(".")[0], set()).update(
            t.split(".")[0] for t in targets if t.split(".")[0] != module.split(".")[0])
    assert _cycle(packages) is None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, imports in MODULES.items() if module.split(".")[0] == package
        for target, _ in imports
        if (top := target.split(".")[0]) in ALLOWED and top != package and top not in ALLOWED[package]
    )
    assert wrong == []


def test_sender_uses_only_the_tls_contexts_of_the_node() -> None:
    used = {target for module, imports in MODULES.items() if module.startswith("sender")
            for target, _ in imports if target.startswith("dicom_node") and target in MODULES}
    assert used <= SENDER_FROM_DICOM_NODE


def test_nothing_imports_the_cli_or_the_api() -> None:
    wrong = sorted(f"{module} imports {target}" for module, imports in MODULES.items()
                   if not module.startswith("gateway") for target, _ in imports
                   if target.split(".")[0] == "gateway")
    assert wrong == []


def test_the_listener_loads_no_model_queue_or_sr_library() -> None:
    """Statically (every import the dicom_node modules reach, lazy ones too) and in a real process."""
    edges = _project_edges(top_level_only=False)
    reached, todo = set(), [m for m in MODULES if m.startswith("dicom_node")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(edges[module])
    static = sorted(f"{module} imports {target}" for module in reached for target, _ in MODULES[module]
                    if target.split(".")[0] in LISTENER_FORBIDDEN)
    assert static == []

    probe = (
        "import importlib, json, pkgutil, sys\n"
        "import dicom_node\n"
        "for m in pkgutil.walk_packages(dicom_node.__path__, 'dicom_node.'):\n"
        "    importlib.import_module(m.name)\n"
        "from dicom_node.scp import StorageSCP\n"
        f"print(json.dumps(sorted(n for n in {LISTENER_FORBIDDEN!r} if n in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert json.loads(out.splitlines()[-1]) == []


#: The only modules that may write job and delivery states and their event rows.
STATE_MACHINES = {"workflow.jobs": ("Job", "JobEvent", "JobState"),
                  "workflow.deliveries": ("Delivery", "DeliveryEvent", "DeliveryState"),
                  "workflow.states": ("the conditional UPDATE both perform",)}


def _state_writes(path: Path) -> list[str]:
    """Places in ``path`` that write a job or delivery state or an event row.

    Found: ``JobEvent(...)``/``DeliveryEvent(...)``; any ``x.state = ...`` (also in tuple
    assignments; no other row has its state assigned in Python; an object's own ``self.state``,
    such as the upper layer's Sta1..Sta13, is not a row); ``state=<JobState/DeliveryState
    ...>`` passed to ``values()``, ``Job()`` or ``Delivery()``; and ``setattr(x, "state", ...)``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def mentions_state(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and n.id in ("JobState", "DeliveryState") for n in ast.walk(node))

    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else (
                node.func.attr if isinstance(node.func, ast.Attribute) else "")
            if name in ("JobEvent", "DeliveryEvent"):
                found.append(f"{where} {name}(...)")
            if name in ("values", "Job", "Delivery"):
                found.extend(f"{where} {name}(state=...)" for kw in node.keywords
                             if kw.arg == "state" and mentions_state(kw.value))
            if name == "setattr" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value == "state":
                found.append(f"{where} setattr(..., 'state', ...)")
        elif isinstance(node, ast.Assign):
            targets = [t for target in node.targets
                       for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            if any(isinstance(t, ast.Attribute) and t.attr == "state"
                   and not (isinstance(t.value, ast.Name) and t.value.id == "self") for t in targets):
                found.append(f"{where} .state = ...")
    return found


def test_only_the_state_machines_write_job_and_delivery_states() -> None:
    writes = [w for package in ALLOWED for path in sorted((ROOT / package).rglob("*.py"))
              if _module_name(path) not in STATE_MACHINES for w in _state_writes(path)]
    assert writes == []


def test_the_state_write_finder_finds_the_state_machines_writes() -> None:
    """Guards the test above: it does see the writes that the two owners make."""
    for module in STATE_MACHINES:
        assert _state_writes(ROOT / (module.replace(".", "/") + ".py")), module
