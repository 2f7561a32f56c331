"""service/protocol.py leans on private parts of aiohttp's connection handler; the dependency range in
pyproject.toml is what they were checked on, and this file fails on an aiohttp outside it or one whose
private parts moved, before the raw-socket tests fail in less obvious ways."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from aiohttp import web
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _aiohttp_requirement() -> Requirement:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in dependencies if Requirement(d).name == "aiohttp"]
    return requirement


class TestAiohttpRange:
    def test_the_installed_aiohttp_is_in_the_tested_range(self) -> None:
        """pip keeps an install inside the range; this catches a range widened without a check."""
        requirement = _aiohttp_requirement()
        assert requirement.specifier.contains(version("aiohttp")), (
            f"aiohttp {version('aiohttp')} is outside {requirement.specifier}"
        )
        assert "<" in str(requirement.specifier), "the range has an upper bound"

    @pytest.mark.parametrize(
        ("owner", "name"),
        [
            (web.RequestHandler, "data_received"),
            (web.RequestHandler, "handle_error"),
            (web.RequestHandler, "finish_response"),
            (web.RequestHandler, "log_exception"),
            (web.AppRunner, "_make_server"),
        ],
    )
    def test_the_overridden_methods_exist(self, owner: type, name: str) -> None:
        """Every method service/protocol.py overrides is still aiohttp's to override."""
        assert callable(getattr(owner, name, None))

    @pytest.mark.parametrize("name", ["_messages", "_waiter", "_request_count", "_force_close", "_upgraded"])
    def test_the_handler_state_it_reads_exists(self, name: str) -> None:
        """The per-connection state the header timeout reads is still in aiohttp's handler."""
        slots = {slot for cls in web.RequestHandler.__mro__ for slot in getattr(cls, "__slots__", ())}
        assert name in slots
