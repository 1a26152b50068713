"""Request bodies, made just before a job is sent under the memory budget, and again to resend."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from rpq.budget import MB, Budget, Hold, keep_pixel_blocks
from rpq.errors import InputError
from rpq.images import ImageFile, Prepared, prepare, prepare_cost
from rpq.template import RequestBody, RequestTemplate

#: RunPod's documented /run body limit.
RUN_BODY_LIMIT = 10 * 1000 * 1000

#: Most freed pixel memory Pillow keeps for the next image when re-encoding (a quarter of the
#: budget at most, set aside from it): two 24 MP photos being resized at once need about this.
PIXEL_POOL = 96 * MB

#: How often a job waiting for its turn to prepare looks at its give-up condition.
_RECHECK = 0.25


#: Prepares one image: what the template needs, the bytes and/or a URL to the image.
Prepare = Callable[[ImageFile], tuple[Prepared, str | None]]


class Bodies:
    """Makes the request bodies of a batch's images; one instance per batch.

    `prepare` is the batch's own (a bucket's images may be sent by URL); by default, the
    local file is prepared with `max_side` and `fmt`, which also size its cost.

    At most one image per CPU is prepared at a time: preparing is CPU work (Pillow runs it
    outside the GIL), so more at once would only hold more pixels for no gain. When images
    are re-encoded, Pillow keeps freed pixel blocks for the next one (keep_pixel_blocks), in
    memory set aside from the budget.
    """

    def __init__(
        self,
        template: RequestTemplate,
        budget: Budget,
        *,
        policy: dict[str, Any] | None = None,
        max_side: int | None = None,
        fmt: str | None = None,
        give_up: Callable[[], bool] | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self.template = template
        self.budget = budget
        self.policy = policy
        self.max_side = max_side
        self.fmt = fmt
        self.give_up = give_up
        self.prepare: Prepare = prepare or self._local
        self.at_once = _cpus()  # images prepared at once, at most
        self.turns = threading.BoundedSemaphore(self.at_once)
        reencode = max_side is not None or fmt is not None
        keep_pixel_blocks(budget.set_aside(PIXEL_POOL) if reencode else 0)

    def _local(self, image: ImageFile) -> tuple[Prepared, str | None]:
        return prepare(image, max_side=self.max_side, fmt=self.fmt), None

    def of(self, image: ImageFile) -> Body:
        return Body(self, image)


def _cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


class Body:
    """One image's request body: held, and counted against the budget, from open to close.

    Nothing is kept between a send and the next: a job only waiting on the endpoint holds no
    image data, and a resend reads and prepares the file again.
    """

    def __init__(self, bodies: Bodies, image: ImageFile) -> None:
        self._bodies = bodies
        self.image = image
        self._hold: Hold | None = None

    def open(self) -> RequestBody | None:
        """Prepare the image and render its request, waiting for room in the budget.

        None when the batch stops while waiting. Raises InputError for an image that cannot
        be sent (unreadable, corrupt, or a request over RunPod's /run limit).
        """
        b = self._bodies
        self.close()
        cost = prepare_cost(self.image, max_side=b.max_side, fmt=b.fmt)
        hold = b.budget.hold(cost, b.give_up)
        if hold is None:
            return None
        try:
            if not self._turn():
                hold.release()
                return None
            try:
                prepared, url = b.prepare(self.image)
            finally:
                b.turns.release()
            body = b.template.render_body(prepared, policy=b.policy, url=url)
            del prepared  # the body is all that is sent
            if len(body) > RUN_BODY_LIMIT:
                raise InputError(
                    f"request is {len(body) / 1e6:.1f} MB, over RunPod's 10 MB /run limit. "
                    "Pass --max-side 2048 (or smaller) or --format jpeg to shrink it.")
            hold.resize(len(body))
        except BaseException:
            hold.release()
            raise
        self._hold = hold
        return body

    def _turn(self) -> bool:
        """Wait for a turn to prepare (one per CPU); False if the batch stops meanwhile."""
        b = self._bodies
        while not b.turns.acquire(timeout=_RECHECK):
            if b.give_up is not None and b.give_up():
                return False
        return True

    def close(self) -> None:
        """The body was sent (or given up on): its bytes no longer count."""
        if self._hold is not None:
            self._hold.release()
            self._hold = None
