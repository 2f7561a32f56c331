"""Settled and voided holds: forgotten at once, their ids kept in the chat's list of latest resolutions
(a string key of its own, appended to), and chats the version before wrote, which kept that list in the
reservations hash and may lack the members that keep the deadlines set and the hash from emptying: they
behave as they did (design.md section 11)."""

from __future__ import annotations

from typing import cast

import msgspec
import pytest

from ledger import (
    ConfigRecord,
    Keyspace,
    Ledger,
    RedisClient,
    ReservationAlreadySettled,
    ReservationAlreadyVoided,
    ReservationNotFound,
)
from ledger.limits import RESOLVED_BYTES
from tests.integration.helpers import chat_snapshot, reserve, settle

# The member of the deadlines set and the field of the reservations hash that no reservation removes.
NEVER_MEMBER = "~"


async def as_before(redis: RedisClient, keyspace: Keyspace, chat_id: str, older_list: str | None) -> None:
    """Make the chat look written by the version before: no list key; the list, if any, in field `~` of
    the reservations hash; without it, neither set has its member that no reservation removes."""
    await redis.delete(keyspace.chat_resolved(chat_id))
    await redis.zrem(keyspace.chat_deadlines(chat_id), NEVER_MEMBER)
    await redis.hdel(keyspace.chat_reservations(chat_id), NEVER_MEMBER)
    if older_list is not None:
        await redis.hset(keyspace.chat_reservations(chat_id), NEVER_MEMBER, older_list)


class TestTheListOfLatestResolutions:
    async def test_a_resolution_leaves_only_its_id_in_the_list(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """The hold's two records go; the list names it with its state; both sets keep their member."""
        chat_id = (await ledger.create_chat(config, 10**9)).chat_id
        settled = await reserve(ledger, config, chat_id)
        await settle(ledger, settled, charge_milli=1_000)
        voided = await reserve(ledger, config, chat_id)
        await ledger.void(voided)
        keys, redis = ledger.keys, ledger.redis
        assert await redis.get(keys.chat_resolved(chat_id)) == (
            f";{settled.reservation_id}=s;{voided.reservation_id}=v"
        )
        assert await redis.hgetall(keys.chat_reservations(chat_id)) == {NEVER_MEMBER: ""}
        assert await redis.zrange(keys.chat_deadlines(chat_id), 0, -1) == [NEVER_MEMBER]

    async def test_the_list_is_cut_back_to_its_newest_entries(
        self, ledger: Ledger, config: ConfigRecord
    ) -> None:
        """However many holds a chat resolves, the list stays under twice RESOLVED_BYTES, starts at an
        entry, and still recognises the newest 14."""
        chat_id = (await ledger.create_chat(config, 10**9)).chat_id
        holds = []
        for _ in range(3 * RESOLVED_BYTES // 36):
            hold = await reserve(ledger, config, chat_id)
            await settle(ledger, hold, charge_milli=1)
            holds.append(hold)
        listed = cast(str, await ledger.redis.get(ledger.keys.chat_resolved(chat_id)))
        assert RESOLVED_BYTES <= len(listed) <= 2 * RESOLVED_BYTES
        assert listed.startswith(";")
        for hold in holds[-14:]:
            with pytest.raises(ReservationAlreadySettled):
                await ledger.void(hold)
        with pytest.raises(ReservationNotFound):
            await ledger.void(holds[0])


class TestChatsWrittenBefore:
    async def test_a_replay_listed_in_the_reservations_hash_is_recognised(
        self, ledger: Ledger, config: ConfigRecord, redis_client: RedisClient, keyspace: Keyspace
    ) -> None:
        """A hold the version before resolved, listed in the hash's field, is refused as settled or
        voided, and nothing changes."""
        chat_id = (await ledger.create_chat(config, 10**9)).chat_id
        settled = await reserve(ledger, config, chat_id)
        await settle(ledger, settled, charge_milli=1_000)
        voided = await reserve(ledger, config, chat_id)
        await ledger.void(voided)
        older = f";{'0' * 32}=s;{settled.reservation_id}=s;{voided.reservation_id}=v"
        await as_before(redis_client, keyspace, chat_id, older)
        before = await chat_snapshot(redis_client, keyspace, chat_id)  # type: ignore[arg-type]
        with pytest.raises(ReservationAlreadySettled):
            await settle(ledger, settled, charge_milli=1)
        with pytest.raises(ReservationAlreadyVoided):
            await settle(ledger, voided, charge_milli=1)
        with pytest.raises(ReservationAlreadySettled):
            await ledger.void(settled)
        assert await chat_snapshot(redis_client, keyspace, chat_id) == before  # type: ignore[arg-type]

    @pytest.mark.parametrize("listed", [False, True], ids=["no list", "a list in the hash"])
    async def test_neither_set_empties_after_the_first_resolution(
        self,
        ledger: Ledger,
        config: ConfigRecord,
        redis_client: RedisClient,
        keyspace: Keyspace,
        listed: bool,
    ) -> None:
        """A chat without the members that keep its deadlines set and reservations hash from emptying
        gets them with its next resolution, so resolving its last hold deletes neither key; a list the
        hash already held is kept as it is, and still read."""
        chat_id = (await ledger.create_chat(config, 10**9)).chat_id
        await settle(ledger, await reserve(ledger, config, chat_id), charge_milli=1)
        older = f";{'0' * 32}=v" if listed else None
        await as_before(redis_client, keyspace, chat_id, older)
        hold = await reserve(ledger, config, chat_id)
        await settle(ledger, hold, charge_milli=1)
        assert await redis_client.zrange(keyspace.chat_deadlines(chat_id), 0, -1) == [NEVER_MEMBER]
        assert await redis_client.hgetall(keyspace.chat_reservations(chat_id)) == {NEVER_MEMBER: older or ""}
        assert await redis_client.get(keyspace.chat_resolved(chat_id)) == f";{hold.reservation_id}=s"
        with pytest.raises(ReservationAlreadySettled):
            await ledger.void(hold)
        if listed:
            with pytest.raises(ReservationAlreadyVoided):
                await ledger.void(msgspec.structs.replace(hold, reservation_id="0" * 32))
