"""A config's `model_calls_max` through the admin API: stored, shown, patched, whole and in range."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.http.test_admin import Admin, admin_client

__all__ = ["admin_client"]


async def test_model_calls_max_is_set_shown_and_patched(
    admin_client: TestClient[web.Request, web.Application],
) -> None:
    admin = Admin(admin_client)
    status, config = await admin.call("POST", "/admin/configs", json={"agent_name": "A", "company_name": "B"})
    assert (status, config["model_calls_max"]) == (200, 0)
    path = f"/admin/configs/{config['config_id']}"
    status, patched = await admin.call("PATCH", path, json={"model_calls_max": 8.0})
    assert (status, patched["model_calls_max"]) == (200, 8)
    assert (await admin.call("GET", path))[1]["model_calls_max"] == 8


@pytest.mark.parametrize("value", [-1, 2.5, 100_001, "8"])
async def test_model_calls_max_out_of_range_is_422(
    admin_client: TestClient[web.Request, web.Application], value: Any
) -> None:
    body = {"agent_name": "A", "company_name": "B", "model_calls_max": value}
    assert (await Admin(admin_client).call("POST", "/admin/configs", json=body))[0] == 422
