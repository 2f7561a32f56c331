"""The admin API under /admin/: configs, API keys, and any chat, behind a bearer token.

With no CHATLEDGER_ADMIN_TOKEN the whole surface answers 404, as if it did not exist. The token is
compared in constant time. Admin routes see every config's chats, deleted ones included.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

import ledger
from service.admin_schemas import (
    AdminChat,
    AdminConfig,
    AdminConfigList,
    ConfigCreate,
    ConfigFields,
    ConfigPatch,
    Done,
    EraseQuery,
    IssuedKeyOut,
    JournalPage,
    JournalQuery,
    KeyList,
    KeyOut,
    ReconciliationOut,
    admin_chat,
    admin_config,
    journal_entry,
    reconciliation,
)
from service.appkeys import LEDGER, SETTINGS, TENANTS
from service.errors import ApiError
from service.handlers.common import json_response
from service.handlers.messages import history_page
from service.openapi import Doc, documented
from service.requests import decode_body, decode_query, history_query, path_chat_id
from service.schemas import HistoryPageQuery, MessageOut, Page, iso_utc

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.Response]]

CONFIG_CREATE_DECODER = msgspec.json.Decoder(ConfigCreate)
CONFIG_PATCH_DECODER = msgspec.json.Decoder(ConfigPatch)


def require_admin(request: web.Request) -> None:
    """401 without the right bearer token; 404 when the admin API is off.

    The given token is compared as the bytes the client sent: aiohttp hands non-UTF-8 header bytes
    over as lone surrogates, which `surrogateescape` turns back into those bytes instead of raising."""
    token = request.app[SETTINGS].admin_token
    if not token:
        raise web.HTTPNotFound()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, token.encode()):
        raise ApiError(401, "invalid_admin_token", "A valid admin bearer token is required.")


def _admin(method: str, path: str, doc: Doc) -> Callable[[Handler], Handler]:
    """Route `method path` to the handler behind the admin token, documented as an admin operation: the
    check and the document's auth come with the route, so no admin handler can go without them."""

    def register(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.Response:
            require_admin(request)
            return await handler(request)

        admin_doc = msgspec.structs.replace(doc, auth="admin", tag="admin")
        routes.route(method, path)(documented(admin_doc)(guarded))
        return guarded

    return register


def config_id_of(request: web.Request) -> str:
    config_id = ledger.normalize_uuid(request.match_info["config_id"])
    if config_id is None:
        raise ledger.ConfigNotFound()
    return config_id


async def _config(request: web.Request) -> ledger.ConfigRecord:
    config = await request.app[TENANTS].get_config(config_id_of(request))
    if config is None:
        raise ledger.ConfigNotFound()
    return config


async def _chat_id(request: web.Request) -> str:
    """The path's chat, which must exist (deleted or not, of any config)."""
    chat_id = path_chat_id(request)
    await request.app[LEDGER].get_chat(None, chat_id)
    return chat_id


def _fields(body: ConfigFields) -> dict[str, Any]:
    try:
        return body.record_fields()
    except ledger.InvalidAmount as exc:
        raise ApiError(422, "invalid_weight", str(exc)) from exc


# The decorator for admin routes defined in other modules (service/handlers/admin_data.py).
admin_route = _admin


# --- configs -----------------------------------------------------------------------------------------
@_admin("GET", "/admin/configs", Doc(summary="List every config.", response=AdminConfigList))
async def list_configs(request: web.Request) -> web.Response:
    tenants = request.app[TENANTS]
    configs = [await tenants.get_config(config_id) for config_id in await tenants.list_config_ids()]
    return json_response(AdminConfigList([admin_config(c) for c in configs if c is not None]))


@_admin("POST", "/admin/configs", Doc(summary="Create a config.", body=ConfigCreate, response=AdminConfig))
async def create_config(request: web.Request) -> web.Response:
    body = decode_body(await request.read(), CONFIG_CREATE_DECODER)
    config = await request.app[TENANTS].create_config(**_fields(body))
    return json_response(admin_config(config))


@_admin(
    "GET", "/admin/configs/{config_id}", Doc(summary="Read a config.", response=AdminConfig, errors=(404,))
)
async def get_config(request: web.Request) -> web.Response:
    return json_response(admin_config(await _config(request)))


@_admin("PATCH", "/admin/configs/{config_id}",
        Doc(summary="Change some fields of a config.", body=ConfigPatch, response=AdminConfig,
            errors=(404,)))  # fmt: skip
async def update_config(request: web.Request) -> web.Response:
    config_id = config_id_of(request)
    body = decode_body(await request.read(), CONFIG_PATCH_DECODER)
    config = await request.app[TENANTS].update_config(config_id, **_fields(body))
    return json_response(admin_config(config))


@_admin("DELETE", "/admin/configs/{config_id}",
        Doc(summary="Delete a config and revoke its keys (its chats are kept); with erase=true, erase "
                    "it and every chat of it for good.", query=EraseQuery,
            response=Done, errors=(404,)))  # fmt: skip
async def delete_config(request: web.Request) -> web.Response:
    config_id = config_id_of(request)
    if decode_query(request, EraseQuery).erase:
        # Resumes an interrupted erasure: the config record may be gone while its chats are not.
        if not await request.app[LEDGER].config_exists(config_id):
            raise ledger.ConfigNotFound()
        await request.app[LEDGER].erase_config(config_id)
        return json_response(Done(True))
    if not await request.app[TENANTS].delete_config(config_id):
        raise ledger.ConfigNotFound()
    return json_response(Done(True))


# --- keys ------------------------------------------------------------------------------------------
@_admin("POST", "/admin/configs/{config_id}/keys",
        Doc(summary="Issue an API key (shown once).", response=IssuedKeyOut, errors=(404,)))  # fmt: skip
async def issue_key(request: web.Request) -> web.Response:
    issued = await request.app[TENANTS].issue_key(config_id_of(request))
    return json_response(
        IssuedKeyOut(
            key_id=issued.key_id, api_key=issued.api_key, config_id=issued.config_id,
            created_at=iso_utc(issued.created_ms),
        )
    )  # fmt: skip


@_admin("GET", "/admin/configs/{config_id}/keys",
        Doc(summary="List a config's keys (ids and prefixes).", response=KeyList, errors=(404,)))  # fmt: skip
async def list_keys(request: web.Request) -> web.Response:
    config = await _config(request)
    infos = await request.app[TENANTS].list_keys(config.config_id)
    return json_response(
        KeyList([KeyOut(key_id=i.key_id, prefix=i.prefix, created_at=iso_utc(i.created_ms)) for i in infos])
    )


@_admin("DELETE", "/admin/configs/{config_id}/keys/{key_id}",
        Doc(summary="Revoke an API key.", response=Done, errors=(404,)))  # fmt: skip
async def revoke_key(request: web.Request) -> web.Response:
    if not await request.app[TENANTS].revoke_key(config_id_of(request), request.match_info["key_id"]):
        raise ApiError(404, "key_not_found", "No such key for this config.")
    return json_response(Done(True))


# --- chats -----------------------------------------------------------------------------------------
@_admin("GET", "/admin/chats/{chat_id}",
        Doc(summary="Read any chat with its ledger figures.", response=AdminChat, errors=(404,)))  # fmt: skip
async def get_chat(request: web.Request) -> web.Response:
    return json_response(admin_chat(await request.app[LEDGER].inspect_chat(path_chat_id(request))))


@_admin("GET", "/admin/chats/{chat_id}/messages/",
        Doc(summary="Read any chat's history, deleted chats included.", query=HistoryPageQuery,
            response=Page[MessageOut], errors=(404,)))  # fmt: skip
async def chat_history(request: web.Request) -> web.Response:
    chat_id = path_chat_id(request)
    return await history_page(request, None, chat_id, history_query(request))


@_admin("POST", "/admin/chats/{chat_id}/restore",
        Doc(summary="Restore a soft-deleted chat.", response=AdminChat, errors=(404, 409)))  # fmt: skip
async def restore_chat(request: web.Request) -> web.Response:
    return json_response(admin_chat(await request.app[LEDGER].restore_chat(path_chat_id(request))))


@_admin("GET", "/admin/chats/{chat_id}/journal",
        Doc(summary="A page of the chat's usage journal, oldest first.", query=JournalQuery,
            response=JournalPage, errors=(404,)))  # fmt: skip
async def chat_journal(request: web.Request) -> web.Response:
    chat_id = await _chat_id(request)
    query = decode_query(request, JournalQuery)
    entries = await request.app[LEDGER].read_journal(chat_id, after=query.after, count=query.limit)
    return json_response(JournalPage([journal_entry(e) for e in entries]))


@_admin("GET", "/admin/chats/{chat_id}/reconciliation",
        Doc(summary="The journal's sums against the chat's counters.", response=ReconciliationOut,
            errors=(404,)))  # fmt: skip
async def chat_reconciliation(request: web.Request) -> web.Response:
    return json_response(reconciliation(await request.app[LEDGER].reconcile(await _chat_id(request))))
