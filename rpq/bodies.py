"""Request bodies, made just before a job is sent under the memory budget, and again to resend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rpq.budget import Budget, Hold
from rpq.errors import InputError
from rpq.images import ImageFile, Prepared, prepare, prepare_cost
from rpq.template import RequestTemplate

#: RunPod's documented /run body limit.
RUN_BODY_LIMIT = 10 * 1000 * 1000


#: Prepares one image: what the template needs, the bytes and/or a URL to the image.
Prepare = Callable[[ImageFile], tuple[Prepared, str | None]]


class Bodies:
    """Makes the request bodies of a batch's images; one instance per batch.

    `prepare` is the batch's own (a bucket's images may be sent by URL); by default, the
    local file is prepared with `max_side` and `fmt`, which also size its cost.
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

    def _local(self, image: ImageFile) -> tuple[Prepared, str | None]:
        return prepare(image, max_side=self.max_side, fmt=self.fmt), None

    def of(self, image: ImageFile) -> Body:
        return Body(self, image)


class Body:
    """One image's request body: held, and counted against the budget, from open to close.

    Nothing is kept between a send and the next: a job only waiting on the endpoint holds no
    image data, and a resend reads and prepares the file again.
    """

    def __init__(self, bodies: Bodies, image: ImageFile) -> None:
        self._bodies = bodies
        self.image = image
        self._hold: Hold | None = None

    def open(self) -> bytes | None:
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
            prepared, url = b.prepare(self.image)
            body = b.template.render(prepared, policy=b.policy, url=url)
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

    def close(self) -> None:
        """The body was sent (or given up on): its bytes no longer count."""
        if self._hold is not None:
            self._hold.release()
            self._hold = None
