"""A worker's cap on the requests it serves at once (CHATLEDGER_MAX_IN_FLIGHT), and its refusals.

Offered more than it can do, a worker without a cap queues without bound: every request it accepts
shares one event loop, so each waits longer than the last, and all of them get slow together. With the
cap, a request past it is answered at once with 503 `overloaded` and `Retry-After`, before auth, before
any Redis call and before anything is reserved, so the requests admitted keep their latency.

"In flight" is what the request middleware sees: a request counts from the moment aiohttp has parsed its
head and called the middleware until its handler returns its response, so a streamed reply holds its
slot until the stream ends. Requests still in the kernel's buffers or in aiohttp's parser are not
counted: each connection carries one request at a time, so they are bounded by the connections. One
counter per app, on one event loop: a plain int needs no lock.

Health and metrics routes are never refused, so a load balancer and a scraper still see the worker;
`/readyz` answers 503 while it is saturated, so a load balancer sends its traffic elsewhere.
"""

from __future__ import annotations

import time

from aiohttp import web

from service.errors import error_body
from service.routing import slash_forms

# Never refused: a load balancer must still see /readyz, and a scraper /metrics, under overload.
UNSHED_PATHS = ("/healthz", "/readyz", "/metrics")
# A refusal asks for a retry this many seconds later: the requests in flight end within it.
RETRY_AFTER_S = 1
# A worker that refused a request this recently still reports itself saturated: a health check samples
# one moment, and an overload that comes in bursts sits mostly between two of them.
SATURATED_FOR_S = 1.0
# At most one `requests_shed` log line per this many seconds: a line per refusal would spend, under
# overload, the CPU that refusing saves.
LOG_EVERY_S = 1.0


class Admission:
    """The requests this worker is serving against its cap, and when it last refused one."""

    __slots__ = ("_body", "_unshed", "in_flight", "last_shed_at", "limit", "logged_at", "shed_unlogged")

    def __init__(self, limit: int, api_prefix: str) -> None:
        self.in_flight = 0
        self.limit = limit
        self.last_shed_at = -SATURATED_FOR_S
        self.shed_unlogged = 0
        self.logged_at = -LOG_EVERY_S
        self._unshed = frozenset(form for path in UNSHED_PATHS for form in slash_forms(api_prefix + path))
        self._body = error_body(
            "overloaded",
            f"This worker is serving as many requests as it may at once ({limit}); retry shortly.",
        )

    def sheds(self, request: web.Request) -> bool:
        """Whether a request that arrives at the cap is refused: all but health, metrics and OPTIONS (a
        CORS preflight is answered without a handler, and a browser whose preflight fails never sees
        the 503 nor its Retry-After)."""
        if request.method == "OPTIONS":
            return False
        resource = request.match_info.route.resource
        return resource is None or self.may_shed(resource.canonical)

    def may_shed(self, path: str) -> bool:
        """Whether requests to this routed path (with its base path) may be refused at the cap."""
        return path not in self._unshed

    def refusal(self) -> web.Response:
        """The 503 for a refused request; notes the time, for `saturated`."""
        self.last_shed_at = time.monotonic()
        self.shed_unlogged += 1
        response = web.Response(status=503, body=self._body, content_type="application/json")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    def log_due(self) -> bool:
        """Whether the refusals not yet logged should be now (at most once per LOG_EVERY_S)."""
        return self.last_shed_at - self.logged_at >= LOG_EVERY_S

    def logged(self) -> int:
        """The refusals since the last log line, now logged."""
        count, self.shed_unlogged, self.logged_at = self.shed_unlogged, 0, self.last_shed_at
        return count

    def saturated(self, *, own: int = 1) -> bool:
        """At the cap (not counting the `own` requests of the caller, e.g. the health check asking), or
        refused a request within the last SATURATED_FOR_S."""
        at_cap = self.in_flight - own >= self.limit
        return at_cap or time.monotonic() - self.last_shed_at < SATURATED_FOR_S
