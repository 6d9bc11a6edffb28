"""Each case of the bad-input corpus (tests/test_bad_inputs.py) with the message a user now sees, one line each.

    .venv/bin/python tests/corpus_messages.py [--keep DIR] > issue10_messages.txt

Runs every case through the CLI as the corpus test does and prints `id  exit N  message`, the message
being the output lines that hold the case's expected texts, joined by " ⏎ " (for issue 10's closing note).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

WIDTH = 400   # characters of a message line kept (a path-heavy line can be long)


def message(case, output: str) -> str:
    """The lines of `output` that hold the case's expected texts, each once and shortened to WIDTH."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    hits = []
    for text in case.says:
        hit = next((ln for ln in lines if text in ln), None)
        if hit is not None and hit not in hits:
            hits.append(hit)
    hits = hits or lines[:1] or ["(no output)"]
    return " ⏎ ".join(h if len(h) <= WIDTH else h[:WIDTH] + " ..." for h in hits)


def main(keep: Path | None = None) -> int:
    """Print one line per case; returns how many cases exited with another code than the corpus expects."""
    from test_bad_inputs import CASES, Ctx, invoke, make_project

    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="tunelab-corpus-"))
    (root / "project").mkdir(parents=True, exist_ok=True)
    with redirect_stdout(sys.stderr):   # the Trainer prints its log dicts: keep stdout for the table
        project = make_project(root / "project")
    wrong = 0
    for case in CASES:
        folder = root / case.id
        folder.mkdir(parents=True, exist_ok=True)
        _, result = invoke(case, Ctx(project.root, project.base, folder))
        flag = "" if result.exit_code == case.code else f"  [EXPECTED exit {case.code}]"
        wrong += bool(flag)
        print(f"{case.id:<36} exit {result.exit_code}  {message(case, result.output)}{flag}", flush=True)
    return wrong


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="folder for the project and the cases (default: a new temp folder)")
    sys.exit(1 if main(parser.parse_args().keep) else 0)
