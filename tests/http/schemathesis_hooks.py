"""schemathesis hooks for tests/http/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

Deserializers let schemathesis check the text answers (the reference page, its files, the widget's
script) against the document, as strings; it reads Server-Sent Events itself, each event against the
stream's schema, and each event's `data` against its `contentSchema`.

Each valid Idempotency-Key gets a unique tail before it is sent: schemathesis draws the same few keys
for many requests (the shortest, the longest), and a key seen again is a replay by design (the first
answer, byte for byte, even for a chat deleted since), which its checks would read as the API forgetting
what it created. Replays have their own tests (tests/http/test_idempotency.py).

One filter drops the failures of three rules the document states in words because OpenAPI 3.1 cannot
state them as schema: each is a rule about the request together with the state of the server, or about
two query parameters together, and each has its own test in tests/http/. Every other failure counts.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import schemathesis
from schemathesis import Case, DeserializationContext, Response
from schemathesis.core.failures import Failure
from schemathesis.core.parameters import ParameterLocation
from schemathesis.openapi.checks import RejectedPositiveData

# The codes of refusals a schema-valid request may get, and why no schema says them.
STATEFUL_REFUSALS = {
    # 402: the chat's balance cannot pay for the message and one reply token.
    "insufficient_tokens",
    # A top-up that would take the chat's limit past 10^12: a rule on the sum with the stored limit.
    "token_limit_too_large",
}
# offset, after and before are mutually exclusive (their descriptions say so): OpenAPI 3.1 has no way to
# say that of separate query parameters.
EXCLUSIVE_PAGING = "Use one of offset, after or before."


@schemathesis.deserializer("text/html", "text/javascript", "text/css")
def text(_ctx: DeserializationContext, response: Response) -> str:
    return response.text


_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# The tail: a dash and 32 hex digits; the key keeps at most 255 characters, so a valid key stays valid.
_TAIL_CHARS = 33


@schemathesis.hook
def before_call(_ctx: schemathesis.HookContext, case: Case[Any], _kwargs: dict[str, Any]) -> None:
    """A unique tail on every valid Idempotency-Key. A case whose headers are the negative part (a key or
    X-API-Key missing or malformed) is sent as drawn: editing it would have schemathesis revalidate it
    as a positive one, and send the header it meant to leave out."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return
    for name, value in list(case.headers.items()):
        if name.lower() == "idempotency-key" and isinstance(value, str) and _VALID_KEY.fullmatch(value):
            case.headers[name] = value[: 255 - _TAIL_CHARS] + "-" + uuid.uuid4().hex


@schemathesis.hook
def filter_failure(
    _ctx: schemathesis.HookContext, failure: Failure, case: Case[Any], response: Response
) -> bool:
    """Keep every failure but a positive case refused for one of the rules above."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code not in (402, 422):
        return True
    try:
        body = json.loads(response.text)
    except ValueError:
        return True
    return not (body.get("code") in STATEFUL_REFUSALS or body.get("detail") == EXCLUSIVE_PAGING)
