"""The Lua scripts ship inside the package and are valid Redis Lua (style.md 1, layout rules)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

import lupa.lua51
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

import ledger
from ledger import Keyspace, Ledger, TenantStore, embedded_redis
from ledger.scripts import SCRIPT_NAMES, Scripts, script_source

LUA_DIR = Path(ledger.__file__).parent / "lua"


def lua51_syntax_error(source: str) -> str | None:
    """The Lua 5.1 (Redis's dialect) compile error of a chunk, or None when it compiles."""
    runtime = lupa.lua51.LuaRuntime()
    compiled = runtime.globals().loadstring(source)
    if isinstance(compiled, tuple):
        return str(compiled[1])
    return None


@pytest_asyncio.fixture
async def fake_redis() -> AsyncIterator[Redis]:
    client = embedded_redis()
    await client.flushall()
    yield client
    await client.aclose()


class TestPackageData:
    def test_every_lua_file_is_a_package_resource(self) -> None:
        """Each ledger/lua/*.lua on disk is reachable through importlib.resources, as in a wheel."""
        on_disk = sorted(path.name for path in LUA_DIR.glob("*.lua"))
        resources = sorted(
            entry.name for entry in files("ledger").joinpath("lua").iterdir() if entry.name.endswith(".lua")
        )
        assert on_disk
        assert resources == on_disk
        for name in on_disk:
            resource = files("ledger").joinpath(f"lua/{name}")
            assert resource.is_file()
            assert resource.read_text(encoding="utf-8") == (LUA_DIR / name).read_text(encoding="utf-8")

    def test_every_script_file_has_a_name_and_every_name_a_file(self) -> None:
        """SCRIPT_NAMES and the non-underscore .lua files are the same set (one name, file to method)."""
        scripts = {path.stem for path in LUA_DIR.glob("*.lua") if not path.name.startswith("_")}
        assert scripts == set(SCRIPT_NAMES)

    async def test_every_script_is_registered_under_its_name(self, fake_redis: Redis) -> None:
        """`reserve.lua` is `Scripts.reserve`, and the ledger has a method for it (style.md 2)."""
        scripts = Scripts(fake_redis)
        for name in SCRIPT_NAMES:
            script = getattr(scripts, name)
            assert isinstance(script, AsyncScript)
            assert script.script == script_source(name)
            # Chat scripts are Ledger methods; the API-key limiter is the TenantStore's.
            owner = TenantStore if name == "rate_limit" else Ledger
            assert callable(getattr(owner, "read_history" if name == "history" else name))


class TestScriptSources:
    @pytest.mark.parametrize("name", SCRIPT_NAMES)
    def test_source_compiles_as_lua_51(self, name: str) -> None:
        """Each full script text (constants, prelude, script) compiles as Lua 5.1."""
        assert lua51_syntax_error(script_source(name)) is None

    @pytest.mark.parametrize("name", [path.stem for path in sorted(LUA_DIR.glob("*.lua"))])
    def test_each_file_compiles_alone(self, name: str) -> None:
        """Every .lua file, the prelude included, is valid Lua on its own."""
        assert lua51_syntax_error((LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")) is None

    def test_the_syntax_check_catches_errors(self) -> None:
        """The checker above does reject broken Lua, so its passes mean something."""
        assert lua51_syntax_error("local x = = 1") is not None
        assert lua51_syntax_error(script_source("reserve") + "\nend") is not None

    def test_sources_carry_the_limits(self) -> None:
        """The bounds from ledger/limits.py are prepended to each script, so each has one source."""
        from ledger.limits import HISTORY_SKIP_CHUNK, REAP_BATCH_MAX

        for name in SCRIPT_NAMES:
            source = script_source(name)
            assert f"local REAP_BATCH_MAX = {REAP_BATCH_MAX}\n" in source
            assert f"local HISTORY_SKIP_CHUNK = {HISTORY_SKIP_CHUNK}\n" in source

    async def test_script_load_matches_the_registered_sha(self, fake_redis: Redis) -> None:
        """SCRIPT LOAD of each source returns the SHA the client will EVALSHA."""
        scripts = Scripts(fake_redis)
        for name in SCRIPT_NAMES:
            sha = await fake_redis.script_load(script_source(name))
            assert sha == getattr(scripts, name).sha

    async def test_ledger_start_loads_every_script(self, fake_redis: Redis) -> None:
        """After start(), every script is cached on the server, so no request pays a SCRIPT LOAD."""
        started = Ledger(fake_redis, Keyspace("cltest"))
        await started.start()
        shas = [getattr(started.scripts, name).sha for name in SCRIPT_NAMES]
        assert await fake_redis.script_exists(*shas) == [True] * len(shas)
