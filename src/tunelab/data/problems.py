"""Validation problems, collected rather than raised one at a time, so a person can fix them all at once."""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import asdict, dataclass, field

from tunelab.core.errors import UserError

# How many problems a DataError message spells out before summarising the rest: every problem is
# still counted in the totals and kept on the exception (`.problems`).
MAX_LISTED = 50


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data, located precisely enough to find and fix it."""

    kind: str                 # short machine name, e.g. "malformed_json", "missing_column"
    file: str
    line: int | None = None   # 1-based physical line (CSV header = 1), None for whole-file problems
    field: str | None = None  # field path, e.g. "conversations[2].from"
    expected: str = ""
    found: str = ""
    hint: str = ""
    severity: str = "error"   # "error" stops prepare; "warning" is reported and counted

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        where += f" [{self.field}]" if self.field else ""
        msg = f"{where}: {self.kind}: expected {self.expected}, found {self.found}"
        return msg + (f" ({self.hint})" if self.hint else "")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Problems:
    """An append-only collection of problems with totals by kind and severity."""

    items: list[Problem] = field(default_factory=list)

    def add(self, kind: str, file: str, line: int | None = None, field: str | None = None,
            expected: str = "", found: str = "", hint: str = "", severity: str = "error") -> Problem:
        """Record one problem and return it."""
        p = Problem(kind, file, line, field, expected, found, hint, severity)
        self.items.append(p)
        return p

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    def totals(self) -> dict[str, int]:
        """Problem counts by kind, most frequent first."""
        return dict(Counter(p.kind for p in self.items).most_common())

    def raise_if_errors(self, header: str = "the data has problems", accounting: dict | None = None) -> None:
        """Raise a DataError listing every error-level problem, if there is any."""
        if self.errors:
            raise DataError(self.errors, header, accounting)


class DataError(UserError, ValueError):
    """Data that cannot be prepared; the message lists every problem (file, line, field) and totals.
    `accounting` is, per split, what was read, kept and dropped by reason up to the refusal."""

    def __init__(self, problems: list[Problem], header: str = "the data has problems", accounting: dict | None = None):
        self.problems = list(problems)
        self.accounting = accounting or {}
        super().__init__(format_problems(self.problems, header))


def format_problems(problems: list[Problem], header: str) -> str:
    """A readable block: header with totals, one line per problem (up to MAX_LISTED)."""
    totals = Counter(p.kind for p in problems)
    summary = ", ".join(f"{n} {k}" for k, n in totals.most_common())
    lines = [f"{header}: {len(problems)} problem(s) ({summary})"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more of the same kinds (see the totals above)")
    return "\n".join(lines)


def did_you_mean(name: str, known: list[str]) -> str:
    """A "did you mean 'x'?" hint naming the closest known name, or a list of what exists."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if not close:
        close = [k for k in known if k.lower() == name.lower()]
    listing = f"available: {', '.join(known)}" if known else "the file has no columns"
    return f"did you mean '{close[0]}'? {listing}" if close else listing
