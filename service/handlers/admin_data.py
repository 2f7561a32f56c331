"""The admin API's data lifecycle: erase a chat for good, export a config (design.md section 12).

Registered on the admin route table (service/handlers/admin.py), behind the same token. An erased chat
answers 404 everywhere afterwards, the admin surface included.
"""

from __future__ import annotations

from typing import Annotated, cast

import msgspec
from aiohttp import web

import ledger
from service.admin_schemas import Done, EraseQuery
from service.appkeys import LEDGER
from service.errors import ApiError
from service.export import ndjson_pages
from service.handlers.admin import admin_route, config_id_of
from service.handlers.common import json_response
from service.middlewares import stamp_response
from service.openapi import Doc
from service.requests import decode_query, path_chat_id

NDJSON = "application/x-ndjson"
CURSOR_PATTERN = f"^(?:{ledger.EXPORT_CURSOR_PATTERN})?$"


class ExportQuery(msgspec.Struct, frozen=True):
    include_deleted: bool = False
    # The `cursor` of the last line received: the export resumes after it (ledger.ExportCursor).
    cursor: Annotated[str, msgspec.Meta(pattern=CURSOR_PATTERN)] = ""


@admin_route("DELETE", "/admin/chats/{chat_id}",
             Doc(summary="Soft-delete any chat, or with erase=true remove it and every record of it.",
                 query=EraseQuery, response=Done, errors=(404,)))  # fmt: skip
async def delete_chat(request: web.Request) -> web.Response:
    chat_id = path_chat_id(request)
    book = request.app[LEDGER]
    if decode_query(request, EraseQuery).erase:
        await book.erase_chat(chat_id)
    else:
        chat = await book.get_chat(None, chat_id)
        await book.delete_chat(chat.config_id, chat_id)
    return json_response(Done(True))


@admin_route("GET", "/admin/configs/{config_id}/export",
             Doc(summary="Export a config's chats and messages as NDJSON, one record per line.",
                 description="Lines: `chat` (the admin chat object), then a `message` line per message of "
                 "it, then the next chat; `end` last, or `error` if the store failed midway. Each "
                 "line's `cursor`, sent back as `?cursor=`, resumes the export after that line.",
                 query=ExportQuery, media_types=(NDJSON,), errors=(404, 422)))  # fmt: skip
async def export_config(request: web.Request) -> web.Response:
    config_id = config_id_of(request)
    query = decode_query(request, ExportQuery)
    cursor = ledger.ExportCursor.parse(query.cursor) if query.cursor else None
    if query.cursor and cursor is None:
        raise ApiError(422, "invalid_cursor", "cursor must be one an export line carried.")
    book = request.app[LEDGER]
    if not await book.config_exists(config_id):
        raise ledger.ConfigNotFound()
    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    stamp_response(request, response)
    await response.prepare(request)
    async for chunk in ndjson_pages(book, config_id, cursor, include_deleted=query.include_deleted):
        await response.write(chunk)
    await response.write_eof()
    # Streamed already: the route table's type is the buffered response's.
    return cast(web.Response, response)
