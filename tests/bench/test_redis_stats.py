"""How the runner counts round trips from MONITOR (bench/redis_stats.py): a transaction is one."""

from __future__ import annotations

from bench.redis_stats import fold_monitor


def test_a_transaction_is_one_round_trip_and_script_commands_none() -> None:
    """MULTI..EXEC from one client counts once, commands run by scripts (`lua`) not at all, and
    another client's commands in between still count."""
    lines = [
        '+1700000000.000001 [0 127.0.0.1:5001] "multi"',
        '+1700000000.000002 [0 127.0.0.1:5001] "evalsha" "abc" "6"',
        '+1700000000.000003 [0 lua] "HMGET" "cl:{c:1}:meta" "config"',
        '+1700000000.000004 [0 127.0.0.1:5002] "get" "cl:apikey:x"',
        '+1700000000.000005 [0 127.0.0.1:5001] "xrevrange" "cl:{c:1}:msgs" "+" "-"',
        '+1700000000.000006 [0 127.0.0.1:5001] "exec"',
        '+1700000000.000007 [0 127.0.0.1:5001] "evalsha" "def" "6"',
        '+1700000000.000008 [0 lua] "XADD" "cl:{c:1}:msgs" "*"',
    ]
    seen = fold_monitor(lines)
    assert seen.round_trips == 3
    assert seen.commands == {"multi": 1, "evalsha": 2, "get": 1, "xrevrange": 1, "exec": 1}
