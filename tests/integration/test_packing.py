"""The binary arguments of reserve and settle (ledger/packing.py) read back exactly in Lua, through
Redis's struct library on a real server and through the prelude's own byte reading on fakeredis."""

from __future__ import annotations

from importlib.resources import files

from ledger import RedisClient
from ledger.packing import pack_numbers

# 0, every byte boundary a value crosses, and the largest amount a balance may hold exactly.
EDGES = [0, 1, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**48 + 7, 2**53 - 1]

_READ_BACK = """
local a, b, c, d, e, f, g, h, i, j = unpack_numbers('>I8I8I8I8I8I8I8I8I8I8', ARGV[1])
return {a, b, c, d, e, f, g, h, i, j}
"""


async def test_numbers_read_back_exactly(redis_client: RedisClient) -> None:
    """Numbers Python packs read back unchanged in the scripts, on every backend."""
    prelude = files("ledger").joinpath("lua/_prelude.lua").read_text(encoding="utf-8")
    reply = await redis_client.eval(prelude + _READ_BACK, 0, pack_numbers(*EDGES))
    assert [int(x) for x in reply] == EDGES
