"""`GET /admin/configs/{id}/export`: NDJSON, one record per line, resumable from any line's cursor."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import ledger
from tests.http.conftest import Api, AppFactory, new_tenant
from tests.http.test_admin import TOKEN

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin_client(make_client: AppFactory) -> TestClient[web.Request, web.Application]:
    return await make_client(admin_token=TOKEN)


async def export(
    client: TestClient[web.Request, web.Application], config_id: str, **params: str
) -> tuple[int, str, list[dict[str, Any]]]:
    async with client.get(f"/admin/configs/{config_id}/export", params=params, headers=HEADERS) as response:
        body = await response.read()
        lines = [msgspec.json.decode(line) for line in body.splitlines()] if response.status == 200 else []
        return response.status, response.headers["Content-Type"], lines


class TestExport:
    async def test_lines_resume_and_deleted_chats(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        """A chat line then its message lines, chat by chat, then `end`; deleted chats on request; the
        export resumed from a line's cursor is the lines after it."""
        config, api_key = await new_tenant(tenants)
        api = Api(admin_client, api_key)
        chats = [(await api.create_chat())["chat_id"] for _ in range(3)]
        for chat_id in chats:
            assert (await api.send(chat_id, f"hello {chat_id}"))[0] == 200
        assert (await api.call("DELETE", f"/chats/{chats[1]}"))[0] == 200

        status, content_type, lines = await export(admin_client, config.config_id)
        assert (status, content_type) == (200, "application/x-ndjson")
        assert [line["type"] for line in lines] == ["chat", "message", "message"] * 2 + ["end"]
        assert [line["chat"]["chat_id"] for line in lines if line["type"] == "chat"] == [chats[0], chats[2]]
        assert lines[1]["message"]["content"] == f"hello {chats[0]}"
        assert (lines[1]["message"]["is_user"], lines[2]["message"]["is_user"]) == (True, False)
        assert lines[-1] == {"type": "end", "chats": 2, "messages": 4}

        _status, _type, everything = await export(admin_client, config.config_id, include_deleted="true")
        assert [line["chat"]["deleted"] for line in everything if line["type"] == "chat"] == [
            False,
            True,
            False,
        ]
        for at in range(len(everything) - 1):
            _status, _type, rest = await export(
                admin_client, config.config_id, include_deleted="true", cursor=everything[at]["cursor"]
            )
            assert rest[:-1] == everything[at + 1 : -1]

    async def test_refusals(
        self, admin_client: TestClient[web.Request, web.Application], tenants: ledger.TenantStore
    ) -> None:
        """An unknown config is 404, a cursor no line carried 422, no token 401: before any line."""
        config, _key = await new_tenant(tenants)
        assert (await export(admin_client, "5b7a3c1e-0000-4000-8000-000000000000"))[0] == 404
        assert (await export(admin_client, config.config_id, cursor="junk"))[0] == 422
        async with admin_client.get(f"/admin/configs/{config.config_id}/export") as response:
            assert response.status == 401
        status, _type, lines = await export(admin_client, config.config_id)
        assert (status, lines) == (200, [{"type": "end", "chats": 0, "messages": 0}])
