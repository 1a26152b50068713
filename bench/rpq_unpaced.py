"""`rpq` with its pacing to RunPod's documented limits lifted: the client's own ceiling."""

from __future__ import annotations

import sys

import rpq.limiter
from rpq.cli import main

# A million requests per 10 s: the token buckets never make a caller wait.
for _op in ("run", "status", "health"):
    rpq.limiter.RUNPOD_LIMITS[_op] = (1_000_000, 10.0)

if __name__ == "__main__":
    sys.argv[0] = "rpq"
    sys.exit(main())
