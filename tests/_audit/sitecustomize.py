"""Test-only: record every file operation a process makes under a folder (PYTHONPATH=tests/_audit).

Set TUNELAB_AUDIT_ROOT (the folder watched) and TUNELAB_AUDIT_OUT (where each process writes, at exit,
`<rank>-<pid>.json`: the operations it made there). Uses Python's audit hooks (PEP 578), so it sees
what Python code writes: open for writing, mkdir, rename/replace, remove, rmtree, chmod/utime.
"""

import atexit
import json
import os
import sys

_ROOT = os.environ.get("TUNELAB_AUDIT_ROOT")
_OUT = os.environ.get("TUNELAB_AUDIT_OUT")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.chmod", "os.utime",
           "os.truncate", "os.symlink", "os.link", "shutil.copyfile", "shutil.copytree", "shutil.move"}


def _inside(path) -> bool:
    try:
        return os.path.abspath(os.fsdecode(path)).startswith(_ROOT)
    except (TypeError, ValueError):
        return False


if _ROOT and _OUT:
    _ROOT = os.path.abspath(_ROOT)
    _seen: list = []

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes and _inside(path):
                _seen.append([event, os.fsdecode(path)])
        elif event in _EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if any(_inside(p) for p in paths):
                _seen.append([event, *map(os.fsdecode, paths)])

    def _dump():
        rank = os.environ.get("RANK", "launcher")
        with open(os.path.join(_OUT, f"{rank}-{os.getpid()}.json"), "w") as f:
            json.dump({"rank": rank, "argv": sys.argv, "ops": _seen}, f)

    sys.addaudithook(_hook)
    atexit.register(_dump)
