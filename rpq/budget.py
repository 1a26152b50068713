"""A byte budget shared by a batch's jobs: image data held at once stays under one limit."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType

#: Default for --memory-budget: 40 photos of 24 MP at any concurrency stay under 300 MB RSS.
DEFAULT_BUDGET_MB = 192
MB = 1 << 20

#: How often a waiting job looks at its give-up condition (Ctrl-C, a halt).
_RECHECK = 0.25


class Budget:
    """Counts bytes of image data held (decoded pixels, request bodies, results) against a limit.

    `acquire` waits until the bytes fit, in arrival order, so a large item is never starved by
    a stream of small ones. An item larger than the whole budget is admitted alone, once
    nothing else is held: it cannot fit, and refusing it forever would deadlock the batch.
    `admit` counts bytes that are already in memory (a result that just arrived) without
    waiting: they are held whatever the budget says, and new work waits until they are freed.
    Only the first waiter is woken when bytes are freed: the others could not go before it,
    and waking hundreds of threads to look would cost more than the work they wait for.
    Thread-safe; one instance per batch.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a memory budget must be positive, not {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        # One condition per waiting acquire, oldest first; each shares the lock.
        self._queue: deque[threading.Condition] = deque()
        self._local = threading.local()  # charge_here: bytes held per thread
        self._in_use = 0
        self.peak = 0  # most bytes ever counted at once
        self.waited = 0  # acquires that had to wait

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def waiting(self) -> int:
        """Acquires waiting for room now."""
        with self._lock:
            return len(self._queue)

    def set_aside(self, n: int) -> int:
        """Take up to `n` bytes (at most a quarter of the limit) out of the limit for good.

        For memory a batch keeps outside the items it counts (Pillow's pool of freed pixel
        blocks, see keep_pixel_blocks): the items then share what is left. Returns the bytes
        set aside.
        """
        with self._lock:
            n = max(0, min(n, self.limit // 4))
            self.limit -= n
            return n

    def acquire(self, n: int, give_up: Callable[[], bool] | None = None) -> bool:
        """Wait until `n` bytes fit, then count them. False (nothing counted) if `give_up()`."""
        n = max(0, n)
        with self._lock:
            if not self._queue and self._room(n):
                self._count(n)
                return True
            self.waited += 1
            turn = threading.Condition(self._lock)
            self._queue.append(turn)
            try:
                while self._queue[0] is not turn or not self._room(n):
                    if give_up is not None and give_up():
                        return False
                    turn.wait(_RECHECK)
                self._count(n)
                return True
            finally:
                self._queue.remove(turn)
                self._wake_first()  # the next in line may fit now, or be first now

    def admit(self, n: int) -> None:
        """Count `n` bytes that are held already; never waits."""
        with self._lock:
            self._count(max(0, n))

    def release(self, n: int) -> None:
        with self._lock:
            self._in_use = max(0, self._in_use - max(0, n))
            self._wake_first()

    def charge_here(self, n: int, give_up: Callable[[], bool] | None = None) -> bool:
        """`acquire` on behalf of the calling thread, replacing what it held before.

        For bytes a lower layer reads for a job (a result's HTTP body) that the job's own
        code releases later with `release_here`. The thread's earlier charge is released
        first: a thread never waits while it holds, so waits cannot deadlock.
        """
        self.release_here()
        if not self.acquire(n, give_up):
            return False
        self._local.held = max(0, n)
        return True

    def held_here(self) -> int:
        """Bytes charged by the calling thread and not yet released."""
        return int(getattr(self._local, "held", 0))

    def release_here(self) -> None:
        held = self.held_here()
        if held:
            self._local.held = 0
            self.release(held)

    def hold(self, n: int, give_up: Callable[[], bool] | None = None) -> Hold | None:
        """`acquire` as a Hold to release with `with` (None if given up)."""
        return Hold(self, n) if self.acquire(n, give_up) else None

    def wake(self) -> None:
        """Make every waiting acquire look at its give-up condition now."""
        with self._lock:
            for turn in self._queue:
                turn.notify()

    def _room(self, n: int) -> bool:
        return self._in_use + n <= self.limit or self._in_use == 0

    def _wake_first(self) -> None:
        if self._queue:
            self._queue[0].notify()

    def _count(self, n: int) -> None:
        self._in_use += n
        self.peak = max(self.peak, self._in_use)


class Hold:
    """Bytes counted against a Budget until released; resizing never waits."""

    def __init__(self, budget: Budget, n: int) -> None:
        self._budget = budget
        self.size = max(0, n)

    def resize(self, n: int) -> None:
        """Count `n` bytes instead: the step now holds less (or, estimated low, more)."""
        n = max(0, n)
        if n > self.size:
            self._budget.admit(n - self.size)
        else:
            self._budget.release(self.size - n)
        self.size = n

    def release(self) -> None:
        self.resize(0)

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


#: A download without a Content-Length is first counted at this much, then as it arrives.
DOWNLOAD_STEP = 4 * MB

#: An output smaller than this is not counted while it is written, like a status reply under
#: api.BIG_BODY: its job then holds nothing while its first download waits for room.
SMALL_OUTPUT = 64 << 10


class Downloads:
    """A job's result downloads, counted against a Budget until its files are written.

    A download counts twice its size while it is read (the chunks, then their join) and its
    size once joined. Its body waits in the socket for room when its length is known
    (Content-Length, read before the body); without one, it waits for DOWNLOAD_STEP and is
    counted as it arrives. Only a job that holds nothing counted waits (so a thread never
    waits while it holds, and waits cannot deadlock): its later downloads, and a download
    growing past what it was counted at, are admitted without waiting, and new work waits
    until they are freed. `release` frees them all.
    """

    def __init__(self, budget: Budget, *, may_wait: bool = True) -> None:
        self._budget = budget
        self._may_wait = may_wait
        self.held = 0

    def meter(self) -> Meter:
        """What counts one download's bytes."""
        return Meter(self)

    def take(self, n: int, *, wait: bool) -> None:
        if n <= 0:
            return
        if wait and self._may_wait and self.held == 0:
            self._budget.acquire(n)
        else:
            self._budget.admit(n)
        self.held += n

    def give(self, n: int) -> None:
        n = max(0, min(n, self.held))
        self._budget.release(n)
        self.held -= n

    def release(self) -> None:
        self.give(self.held)


class Meter:
    """One download's bytes, counted in its Downloads as they come (see there)."""

    def __init__(self, downloads: Downloads) -> None:
        self._downloads = downloads
        self.counted = 0

    def expect(self, length: int | None) -> None:
        """The answer's headers are in: count its body before reading it (may wait)."""
        n = 2 * length if length is not None else DOWNLOAD_STEP
        self._downloads.take(n, wait=True)
        self.counted += n

    def arrived(self, total: int) -> None:
        """`total` bytes of the body are in: count them twice, in steps, never waiting."""
        if 2 * total > self.counted:
            more = max(2 * total - self.counted, DOWNLOAD_STEP)
            self._downloads.take(more, wait=False)
            self.counted += more

    def joined(self, size: int) -> None:
        """The chunks are one `size`-byte value now: count that alone."""
        if self.counted > size:
            self._downloads.give(self.counted - size)
            self.counted = size


def text_bytes(value: object) -> int:
    """Bytes held by the strings inside a decoded JSON value (where a result's image lives)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def result_cost(output: object) -> int:
    """Bytes a job's output holds while it is written: its text, and that text decoded."""
    return text_bytes(output) * 7 // 4


#: Pillow allocates pixels in blocks of this size (see keep_pixel_blocks).
PIXEL_BLOCK = 1 << 20


def keep_pixel_blocks(max_bytes: int) -> int:
    """Let Pillow keep up to `max_bytes` of freed pixel blocks to reuse; returns what it may keep.

    Re-encoding a photo makes three images of about its decoded size (the decode and the two
    passes of the resize). With map_large_blocks, each new one is mapped from the system and
    faulted in page by page, which costs about a fifth of the CPU of preparing the photo; a
    block taken from Pillow's pool is reused as it is. Blocks of 1 MB (Pillow's default is
    16 MB) fit any image size, so the pool serves images of every size. Process-wide: the
    last call wins. 0 turns the pool off (Pillow's default).
    """
    from PIL import Image

    blocks = max(0, max_bytes) // PIXEL_BLOCK
    Image.core.set_block_size(PIXEL_BLOCK)
    Image.core.set_blocks_max(blocks)
    return blocks * PIXEL_BLOCK


def map_large_blocks(threshold: int = 256 << 10) -> bool:
    """Serve allocations of `threshold` bytes or more from mappings of their own (glibc).

    Freed, such a block goes back to the system at once. glibc's default instead raises the
    threshold after the first large free, then keeps freed image buffers in its per-thread
    arenas, where they stay resident: a batch's RSS grows to twice what it holds and more.
    False where there is no glibc mallopt (macOS, musl, Windows): nothing changes there.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except Exception:  # no C library by that name, or no mallopt in it
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, threshold))
