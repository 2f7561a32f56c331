"""The admin API's data lifecycle: erase a chat or a whole config for good (design.md section 12).

Registered on the admin route table (service/handlers/admin.py), behind the same token. An erased chat
answers 404 everywhere afterwards, the admin surface included.
"""

from __future__ import annotations

from aiohttp import web

from service.admin_schemas import Done, EraseQuery
from service.appkeys import LEDGER
from service.handlers.admin import admin_route
from service.handlers.common import json_response
from service.openapi import Doc
from service.requests import decode_query, path_chat_id


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
