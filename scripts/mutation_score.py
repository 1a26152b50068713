"""Per-module mutation score from `mutmut results --all true` on stdin (make mutants)."""

from __future__ import annotations

import fnmatch
import re
import sys
from collections import Counter, defaultdict

# Detected: a test failed, or the mutant made a test hang past mutmut's timeout.
KILLED = {"killed", "timeout"}
LINE = re.compile(r"^\s*(?P<mutant>(?P<name>[\w.]+)\.x\S*__mutmut_\d+): (?P<status>.+?)\s*$")


def main(patterns: list[str]) -> int:
    """`patterns` are the mutant names `mutmut run` was given (all when none): a mutant they
    select that was never tested counts as "not run", so an unfinished run shows."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for line in sys.stdin:
        match = LINE.match(line)
        if not match:
            continue
        selected = not patterns or any(fnmatch.fnmatch(match["mutant"], p) for p in patterns)
        if match["status"] == "not checked" and not selected:
            continue
        counts[match["name"]][match["status"]] += 1
        if match["status"] not in KILLED | {"not checked"}:
            survivors.append(line.strip())
    totals = Counter[str]()
    print(f"{'module':<18} {'mutants':>7} {'not run':>7} {'killed':>7} {'score':>7}")
    for module in sorted(counts):
        row = _row(counts[module])
        totals.update(row)
        print(_line(module.removeprefix("rpq."), row))
    if totals:
        print(_line("all", totals))
    print(f"\nnot killed ({len(survivors)}; `mutmut show NAME` shows one):")
    for line in survivors:
        print(f"  {line}")
    return 0


def _row(statuses: Counter[str]) -> Counter[str]:
    return Counter(mutants=sum(statuses.values()), not_run=statuses["not checked"],
                   killed=sum(n for status, n in statuses.items() if status in KILLED))


def _line(module: str, row: Counter[str]) -> str:
    ran = row["mutants"] - row["not_run"]
    score = f"{100 * row['killed'] / ran:.1f}%" if ran else "-"
    return (f"{module:<18} {row['mutants']:>7} {row['not_run']:>7} {row['killed']:>7} "
            f"{score:>7}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
