"""The layout's rules, checked on the source: no import cycles, one owner of run-folder file names, one
place a task is defined, messages through logging."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import tunelab
from tunelab.config import Config
from tunelab.core import rundir
from tunelab.tasks import TASKS

SRC = Path(tunelab.__file__).parent


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return out


def _is_package(name: str) -> bool:
    return (SRC.parent / Path(*name.split(".")) / "__init__.py").is_file()


def _top_level_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Modules `name` imports when it is imported: module-level statements, outside `if TYPE_CHECKING`."""
    found: set[str] = set()
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - sub.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in sub.names)
    targets = set()
    for mod in found:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        # Importing a module first runs its parent packages; a module's own packages are already running.
        if mod and mod != name and not name.startswith(mod + "."):
            targets.add(mod)
    return targets


def test_no_import_cycles():
    mods = _modules()
    graph = {name: _top_level_imports(name, tree, set(mods)) for name, tree in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(graph) > 50   # the check saw the whole package


def _run_folder_names() -> set[str]:
    """Every file and folder name core/rundir.py spells for a run folder."""
    names = {o for outs in rundir.OUTPUTS.values() for o in outs if isinstance(o, str)}
    tree = ast.parse(Path(rundir.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
            names.add(str(node.right.value))
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.Constant) and ".jsonl" in str(v.value)
                                                   for v in node.values):
            names.add("<split>.jsonl")
    names |= {f"{s}.jsonl" for s in rundir.SPLITS}
    return names


def test_only_rundir_spells_run_folder_names():
    names = _run_folder_names()
    assert {"config.yaml", "status.json", "metrics.json", "predictions.jsonl", "best", "manifest.json"} <= names
    with_ext = {n for n in names if "." in n}
    offenders = []
    for name, tree in _modules().items():
        if name == "tunelab.core.rundir":
            continue
        for node in ast.walk(tree):
            joined = (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                      and isinstance(node.right, ast.Constant) and node.right.value in names)
            literal = isinstance(node, ast.Constant) and node.value in with_ext
            if joined or literal:
                offenders.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "run-folder names spelled outside core/rundir.py:\n" + "\n".join(offenders)


def test_tasks_are_defined_once():
    assert set(get_args(Config.model_fields["task"].annotation)) == set(TASKS)
    branches = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in TASKS
                                                     for c in node.comparators):
                left = ast.unparse(node.left)
                if left.endswith("task"):
                    branches.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not branches, "task branches outside TASKS:\n" + "\n".join(branches)


def test_messages_go_through_logging():
    prints = [f"{name}:{node.lineno}" for name, tree in _modules().items() for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not prints, f"print() in the package (use logging): {prints}"
