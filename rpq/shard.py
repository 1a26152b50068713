"""`--shard I/N`: a stable split of one input between N machines, by each image's path."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rpq.errors import UsageError


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`: the images whose path hashes to it.

    The hash is the first 8 bytes of SHA-256 of the image's relative path (UTF-8, "/" as the
    separator), read big-endian, modulo `count`, plus one. It depends on nothing but the path,
    so every machine agrees without reading a byte of the images or talking to the others, and
    a rerun (or another Python, another OS) puts each image in the same shard.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: I must be between 1 and N "
                             "(e.g. --shard 1/4 ... --shard 4/4).")

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """`I/N`, 1-based, e.g. `2/8`; a Kubernetes or Slurm index of 0 is written `1/N`."""
        index_text, slash, count_text = spec.strip().partition("/")
        try:
            index, count = int(index_text), int(count_text)
        except ValueError:
            index = count = 0
        if not slash or count < 1:
            raise UsageError(f"--shard {spec!r}: give I/N, e.g. --shard 2/8 for the second of "
                             "8 machines (I counts from 1).")
        return cls(index, count)

    def holds(self, rel: str) -> bool:
        """Whether the image at relative path `rel` belongs to this shard."""
        return shard_of(rel, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(rel: str, count: int) -> int:
    """The 1-based shard of `rel` among `count` (see Shard)."""
    digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1
