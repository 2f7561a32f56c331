"""Mounting route tables under the base path, each path in both slash forms (api.md Part B 1).

Both forms are routed directly rather than redirected: a redirect loses the method, the body and,
in many clients, the X-API-Key header.

A variable segment never matches a literal one of a sibling route: `/chats/{chat_id}` does not match
`/chats/by-config-id` or `/chats/messages`. Without that, aiohttp would answer `OPTIONS
/chats/by-config-id` with `Allow: DELETE, GET` (the methods of both resources), and `GET
/chats/messages/` with a 404 for a chat named "messages" instead of a 405.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiohttp import web

_VARIABLE_RE = re.compile(r"\{([_a-zA-Z][_a-zA-Z0-9]*)\}")


def slash_forms(path: str) -> list[str]:
    """`/chats/` -> [`/chats/`, `/chats`]; `/chats/by-config-id` -> [it, `/chats/by-config-id/`]."""
    if path.endswith("/"):
        return [path, path.rstrip("/")]
    return [path, path + "/"]


def exclusive_variables(path: str, siblings: Iterable[str]) -> str:
    """`path` with each bare `{name}` segment given a pattern that refuses the literal segments the
    sibling paths have at the same place (after the same segments)."""
    segments = path.split("/")
    sibling_segments = [sibling.split("/") for sibling in siblings]
    for index, segment in enumerate(segments):
        match = _VARIABLE_RE.fullmatch(segment)
        if match is None:
            continue
        literals = sorted(
            {
                other[index]
                for other in sibling_segments
                if len(other) > index
                and other[:index] == segments[:index]
                and other[index]
                and "{" not in other[index]
            }
        )
        if literals:
            refused = "|".join(re.escape(literal) for literal in literals)
            # The literal, followed by the end of the segment: "messages-1" is still a variable.
            segments[index] = f"{{{match[1]}:(?!(?:{refused})(?![^/]))[^/]+}}"
    return "/".join(segments)


def mount(app: web.Application, tables: Iterable[web.RouteTableDef], prefix: str) -> None:
    """Add every route of `tables` under `prefix`. A GET route answers HEAD too (aiohttp's
    `add_get`), as RouteTableDef's own registration would."""
    routes: list[web.RouteDef] = []
    for table in tables:
        for route in table:
            assert isinstance(route, web.RouteDef), "tables hold routes only"
            routes.append(route)
    paths = [prefix + route.path for route in routes]
    for route, path in zip(routes, paths, strict=True):
        for form in slash_forms(exclusive_variables(path, paths)):
            if route.method == "GET":
                app.router.add_get(form, route.handler, **route.kwargs)
            else:
                app.router.add_route(route.method, form, route.handler, **route.kwargs)
