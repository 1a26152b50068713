"""Per-module mutation score from `mutmut results --all true` on stdin (make mutants)."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

# Detected: a test failed, or the mutant made a test hang past mutmut's timeout.
KILLED = {"killed", "timeout"}
LINE = re.compile(r"^\s*(?P<name>[\w.]+)\.x\S*__mutmut_\d+: (?P<status>.+?)\s*$")


def main() -> int:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for line in sys.stdin:
        match = LINE.match(line)
        if not match or match["status"] == "not checked":
            continue
        counts[match["name"]][match["status"]] += 1
        if match["status"] not in KILLED:
            survivors.append(f"{line.strip()}")
    total_killed = total = 0
    print(f"{'module':<14} {'killed':>7} {'total':>6} {'score':>7}")
    for module in sorted(counts):
        killed = sum(n for status, n in counts[module].items() if status in KILLED)
        n = sum(counts[module].values())
        total_killed += killed
        total += n
        print(f"{module:<14} {killed:>7} {n:>6} {100 * killed / n:>6.1f}%")
    if total:
        print(f"{'all':<14} {total_killed:>7} {total:>6} {100 * total_killed / total:>6.1f}%")
    print(f"\nnot killed ({len(survivors)}; `mutmut show NAME` shows one):")
    for line in survivors:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
