"""The ledger's exceptions: business outcomes the service maps to statuses, and Redis failures.

Every `redis.RedisError` becomes `LedgerUnavailable` in `wrap_redis_errors`, which wraps every public
method of Ledger and TenantStore and nothing else, so `service/` never imports a Redis exception.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis
import redis.exceptions

from ledger.durable import ReplicaTimeout
from ledger.limits import AMOUNT_MILLI_MAX
from ledger.results import StoredMessage

P = ParamSpec("P")
T = TypeVar("T")


class LedgerError(Exception):
    """Base of every ledger outcome that is not a success; `code` is the machine-readable name."""

    code = "ledger_error"


class ChatNotFound(LedgerError):
    code = "chat_not_found"

    def __init__(self) -> None:
        super().__init__("Chat not found.")


class ChatDeleted(LedgerError):
    code = "chat_deleted"

    def __init__(self) -> None:
        super().__init__("Chat has been deleted.")


class ConfigNotFound(LedgerError):
    code = "config_not_found"

    def __init__(self) -> None:
        super().__init__("No chat configuration for this API key.")


class InvalidAmount(LedgerError, ValueError):
    code = "invalid_amount"


class LimitTooLarge(LedgerError):
    code = "token_limit_too_large"

    def __init__(self, max_milli: int = AMOUNT_MILLI_MAX) -> None:
        self.max_milli = max_milli
        super().__init__("The token limit would exceed the maximum a chat may hold.")


class InsufficientTokens(LedgerError):
    """The chat cannot pay for the prompt plus one reply token; nothing was reserved."""

    code = "insufficient_tokens"

    def __init__(self, *, available_milli: int, needed_milli: int, limit_milli: int, used_milli: int) -> None:
        self.available_milli = available_milli
        self.needed_milli = needed_milli
        self.limit_milli = limit_milli
        self.used_milli = used_milli
        super().__init__("Not enough tokens left in this chat for the message and a reply.")


class TokensHeld(LedgerError):
    """The chat could pay for the prompt plus one reply token, but other messages in flight hold those
    tokens: not a lack of tokens (402), a retry may pass once their holds settle. Nothing was reserved."""

    code = "tokens_held"
    # Seconds a client should wait: holds settle when their model call ends.
    retry_after_s = 1

    def __init__(
        self,
        *,
        available_milli: int,
        needed_milli: int,
        limit_milli: int,
        used_milli: int,
        reserved_milli: int,
    ) -> None:
        self.available_milli = available_milli
        self.needed_milli = needed_milli
        self.limit_milli = limit_milli
        self.used_milli = used_milli
        self.reserved_milli = reserved_milli
        super().__init__("This chat's free tokens are held by messages in flight; retry after Retry-After.")


class ReservationError(LedgerError):
    """A settle or void that found no open reservation: each cause has its own code (style.md 8)."""


class ReservationNotFound(ReservationError):
    code = "reservation_not_found"

    def __init__(self) -> None:
        super().__init__("No such reservation on this chat.")


class ReservationAlreadySettled(ReservationError):
    code = "reservation_already_settled"

    def __init__(self) -> None:
        super().__init__("The reservation was settled already; nothing changed.")


class ReservationAlreadyVoided(ReservationError):
    code = "reservation_already_voided"

    def __init__(self) -> None:
        super().__init__("The reservation was voided already; nothing changed.")


class ReservationExpired(ReservationError):
    code = "reservation_expired"

    def __init__(self) -> None:
        super().__init__("The reservation passed its deadline and was released.")


class LedgerUnavailable(LedgerError):
    code = "store_unavailable"


class NotReplicated(LedgerUnavailable):
    """With CHATLEDGER_DURABILITY=replica, no replica acknowledged the write in time: it is on the
    primary and may not outlive it, so it is not acknowledged; a retry with the same Idempotency-Key
    gets the first result, or runs once if the write was lost."""

    code = "not_replicated"

    def __init__(self) -> None:
        super().__init__("No replica confirmed the write in time; retry with the same Idempotency-Key.")


def wrap_redis_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn a Redis failure inside `fn` into LedgerUnavailable, keeping the cause for the logs."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except ReplicaTimeout as exc:
            raise NotReplicated() from exc
        except redis.exceptions.RedisError as exc:
            raise LedgerUnavailable(f"The token store failed: {type(exc).__name__}.") from exc
        except (AttributeError, RuntimeError) as exc:
            # redis-py's cluster client closes every connection when a failover confuses it (CLUSTERDOWN,
            # repeated MOVED), those other tasks are using too; the command then fails on a connection
            # whose socket is gone: inside redis-py (AttributeError), or in the event loop's transport
            # that redis-py writes to (RuntimeError). The store failed, not the caller: anything else is
            # a bug.
            if not _closed_under_a_command(exc):
                raise
            raise LedgerUnavailable("The token store failed: its connection closed under a command.") from exc

    return wrapper


def _closed_under_a_command(exc: BaseException) -> bool:
    """Whether `exc` is a connection closed under a redis-py command: an AttributeError raised in
    redis-py's own code, or a transport's "closed" RuntimeError raised below a redis-py write."""
    files = []
    traceback = exc.__traceback__
    while traceback is not None:
        files.append(traceback.tb_frame.f_code.co_filename)
        traceback = traceback.tb_next
    if not files:
        return False
    if isinstance(exc, AttributeError):
        return files[-1].startswith(_REDIS_PY)
    return "closed" in str(exc) and any(name.startswith(_REDIS_PY) for name in files)


_REDIS_PY = os.path.dirname(redis.__file__) + os.sep


class DuplicateInFlight(LedgerError):
    """A request with this Idempotency-Key is still being served (409)."""

    code = "idempotency_in_flight"

    def __init__(self) -> None:
        super().__init__("A request with this Idempotency-Key is still in progress; retry later.")


class IdempotencyKeyReused(LedgerError):
    """The Idempotency-Key was used before with a different request (422)."""

    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used with a different request.")


class ExchangeReplayed(LedgerError):
    """The Idempotency-Key's exchange completed before: `message` is the reply that was saved, to be
    answered again without a model call or a charge."""

    code = "idempotency_replayed"

    def __init__(self, message: StoredMessage) -> None:
        self.message = message
        super().__init__("This exchange was completed before; its reply is answered again.")


class ChatNotDeleted(LedgerError):
    """Restoring a chat that is not deleted (409)."""

    code = "chat_not_deleted"

    def __init__(self) -> None:
        super().__init__("The chat is not deleted.")
