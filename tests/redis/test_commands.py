"""Commands, pipelines, scripts, login and connection settings against a real Redis."""

from __future__ import annotations

import socket

import pytest
import trio

from flowqd.config import RedisConfig
from flowqd.errors import BrokerUnavailable, RedisReplyError
from flowqd.redis import Redis, RedisStatistics, open_redis
from tests.redis.helpers import kill_clients
from tests.redisproc import RedisServer, free_port


async def test_reply_types_are_hiredis_raw(redis: Redis, key: str) -> None:
    with trio.fail_after(5):
        assert await redis.execute("SET", key, "välue") == b"OK"
        assert await redis.execute(b"GET", key.encode()) == "välue".encode()
        assert await redis.execute("GET", f"{key}:missing") is None
        assert await redis.execute("INCRBY", f"{key}:n", 5) == 5
        assert await redis.execute("INCRBYFLOAT", f"{key}:f", 1.5) == b"1.5"
        assert await redis.execute("RPUSH", f"{key}:l", "a", b"b", 3) == 3
        assert await redis.execute("LRANGE", f"{key}:l", 0, -1) == [b"a", b"b", b"3"]
        assert await redis.execute("LRANGE", f"{key}:missing", 0, -1) == []
        assert await redis.execute("PING") == b"PONG"


async def test_large_reply_spans_many_reads(redis: Redis, key: str) -> None:
    value = bytes(range(256)) * 4096  # 1 MiB, binary
    with trio.fail_after(5):
        await redis.execute("SET", key, value)
        assert await redis.execute("GET", key) == value


async def test_error_reply_raises_with_redis_message_and_keeps_connection(
    redis: Redis, key: str
) -> None:
    with trio.fail_after(5):
        await redis.execute("SET", key, "x")
        with pytest.raises(RedisReplyError, match=r"^WRONGTYPE Operation against a key"):
            await redis.execute("LPUSH", key, "y")
        with pytest.raises(RedisReplyError, match="unknown command"):
            await redis.execute("NOSUCHCOMMAND")
        assert await redis.execute("GET", key) == b"x"
    # An error reply is a normal answer: the connection stays in the pool.
    assert redis.statistics() == RedisStatistics(
        open_connections=1,
        idle_connections=1,
        dedicated_connections=0,
        in_use_connections=0,
        waiting_tasks=0,
    )


async def test_pipeline_keeps_order_and_returns_error_replies_in_place(
    redis: Redis, key: str
) -> None:
    with trio.fail_after(5):
        replies = await redis.pipeline(
            [
                ("SET", key, "1"),
                ["INCR", key],
                ("LPUSH", key, "oops"),  # wrong type: an error in the middle
                ("INCR", key),
                (b"GET", key),
            ]
        )
    assert replies[:2] == [b"OK", 2]
    assert isinstance(replies[2], RedisReplyError)
    assert str(replies[2]).startswith("WRONGTYPE")
    assert replies[3:] == [3, b"3"]
    assert await redis.pipeline([]) == []


async def test_pipeline_of_many_commands(redis: Redis, key: str) -> None:
    commands = [("RPUSH", key, i) for i in range(5000)]
    with trio.fail_after(10):
        replies = await redis.pipeline(commands)
        assert replies == list(range(1, 5001))
        assert await redis.execute("LLEN", key) == 5000


async def test_script_runs_by_sha_and_reloads_after_flush(redis: Redis, key: str) -> None:
    script = redis.script("redis.call('INCR', KEYS[1]); return {KEYS[1], ARGV[1], 7}")
    assert len(script.sha) == 40
    with trio.fail_after(5):
        await redis.execute("SCRIPT", "FLUSH")
        # Unknown to Redis: NOSCRIPT, loaded, run once (INCR shows it ran once).
        assert await redis.run_script(script, [key], ["a"]) == [key.encode(), b"a", 7]
        assert await redis.execute("SCRIPT", "EXISTS", script.sha) == [1]
        assert await redis.run_script(script, [key], [b"b"]) == [key.encode(), b"b", 7]
        await redis.execute("SCRIPT", "FLUSH")
        assert await redis.run_script(script, [key], [3]) == [key.encode(), b"3", 7]
        assert await redis.execute("GET", key) == b"3"


async def test_script_errors_raise(redis: Redis, key: str) -> None:
    failing = redis.script("return redis.error_reply('MYERR no good')")
    broken = redis.script("this is not lua")
    with trio.fail_after(5):
        with pytest.raises(RedisReplyError, match="MYERR no good"):
            await redis.run_script(failing, [], [])
        with pytest.raises(RedisReplyError, match="Error compiling script"):
            await redis.run_script(broken, [], [])


async def test_scripts_reload_inside_a_pipeline(redis: Redis, key: str) -> None:
    incr = redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    echo = redis.script("return ARGV[1]")
    broken = redis.script("not lua either")
    with trio.fail_after(5):
        await redis.execute("SCRIPT", "FLUSH")
        replies = await redis.pipeline(
            [
                incr.call([key], [1]),
                ("INCR", key),
                echo.call([], ["x"]),
                incr.call([key], [10]),
                broken.call([], []),
                ("GET", key),
            ]
        )
        # Calls that met NOSCRIPT run again after the rest: a pipeline is
        # not a transaction, so INCR and GET saw the key before them.
        assert replies[1] == 1
        assert replies[0] == 2
        assert replies[2] == b"x"
        assert replies[3] == 12
        assert isinstance(replies[4], RedisReplyError)
        assert "Error compiling script" in str(replies[4])
        assert replies[5] == b"1"
        assert await redis.execute("GET", key) == b"12"
        # Loaded now: a second pipeline needs no reload.
        assert await redis.execute("SCRIPT", "EXISTS", incr.sha, echo.sha) == [1, 1]
        assert await redis.pipeline([incr.call([key], [1]), echo.call([], [5])]) == [13, b"5"]


async def test_nested_error_replies_come_back_as_values(redis: Redis, key: str) -> None:
    script = redis.script("return {1, redis.pcall('LPUSH', KEYS[1], 'x')}")
    with trio.fail_after(5):
        await redis.execute("SET", key, "string")
        one, error = await redis.run_script(script, [key], [])
    assert one == 1
    assert isinstance(error, RedisReplyError)
    assert str(error).startswith("WRONGTYPE")


async def test_select_db_survives_reconnect(redis_server: RedisServer, key: str) -> None:
    url3 = redis_server.url.rsplit("/", 1)[0] + "/3"
    with trio.fail_after(5):
        async with (
            open_redis(RedisConfig(url=url3), name="flowqd-db3") as db3,
            open_redis(RedisConfig(host="127.0.0.1", port=redis_server.port, db=0)) as db0,
        ):
            await db3.execute("SET", key, "in 3")
            assert await db0.execute("GET", key) is None
            assert await db3.execute("GET", key) == b"in 3"
            assert await kill_clients(db0, "flowqd-db3") == 1
            assert await db3.execute("GET", key) == b"in 3"


async def test_acl_user_login_and_wrong_password(own_redis_server: RedisServer, key: str) -> None:
    port = own_redis_server.port
    with trio.fail_after(10):
        async with open_redis(RedisConfig(url=own_redis_server.url)) as admin:
            await admin.execute("ACL", "SETUSER", "worker", "on", ">s3cr3t", "~*", "&*", "+@all")
            await admin.execute("CONFIG", "SET", "requirepass", "defaultpw")
        async with open_redis(RedisConfig(url=f"redis://worker:s3cr3t@127.0.0.1:{port}/2")) as r:
            assert await r.execute("ACL", "WHOAMI") == b"worker"
            info = await r.execute("CLIENT", "INFO")
            assert b" db=2 " in info
            assert b" name=flowqd " in info
        # Password only: the default user.
        async with open_redis(RedisConfig(host="127.0.0.1", port=port, password="defaultpw")) as r:
            assert await r.execute("ACL", "WHOAMI") == b"default"
        async with open_redis(
            RedisConfig(host="127.0.0.1", port=port, username="worker", password="wrong")
        ) as r:
            with pytest.raises(BrokerUnavailable) as info:
                await r.execute("PING")
            assert r.statistics().open_connections == 0
        message = str(info.value)
        assert f"Redis at 127.0.0.1:{port} refused the login" in message
        assert "WRONGPASS" in message
        assert "redis.username and redis.password" in message
        assert "wrong" not in message.replace("WRONGPASS", "")
        async with open_redis(RedisConfig(host="127.0.0.1", port=port)) as r:
            with pytest.raises(BrokerUnavailable, match="NOAUTH"):
                await r.execute("PING")


async def test_keep_alive_is_set_on_the_socket(redis_server: RedisServer) -> None:
    config = RedisConfig(url=redis_server.url, keep_alive_ms=7000)
    with trio.fail_after(5):
        async with open_redis(config) as redis, redis.dedicated() as connection:
            await connection.execute("PING")
            sock = connection._raw
            assert sock is not None
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_client_name_shows_in_client_list(redis_server: RedisServer) -> None:
    with trio.fail_after(5):
        async with open_redis(RedisConfig(url=redis_server.url), name="flowqd-w42") as redis:
            async with redis.dedicated(name="flowqd-w42-claim") as connection:
                assert await connection.execute("CLIENT", "GETNAME") == b"flowqd-w42-claim"
            assert await redis.execute("CLIENT", "GETNAME") == b"flowqd-w42"
    with pytest.raises(ValueError, match="without spaces"):
        async with open_redis(RedisConfig(url=redis_server.url), name="two words"):
            pass


async def test_dedicated_connection_pipeline_and_script(redis: Redis, key: str) -> None:
    script = redis.script("return redis.call('RPUSH', KEYS[1], ARGV[1])")
    with trio.fail_after(5):
        async with redis.dedicated() as connection:
            assert redis.statistics().dedicated_connections == 0  # connects on first use
            await redis.execute("SCRIPT", "FLUSH")
            assert await connection.run_script(script, [key], ["a"]) == 1
            assert await connection.pipeline([script.call([key], ["b"]), ("LLEN", key)]) == [2, 2]
            with pytest.raises(RedisReplyError):
                await connection.execute("GET", key)
            assert redis.statistics().dedicated_connections == 1
        assert redis.statistics().dedicated_connections == 0


async def test_open_redis_needs_no_running_redis_to_enter() -> None:
    config = RedisConfig(host="127.0.0.1", port=free_port(), connect_timeout_s=1)
    with trio.fail_after(5):
        async with open_redis(config) as redis:
            with pytest.raises(BrokerUnavailable) as info:
                await redis.execute("PING")
            assert redis.statistics().open_connections == 0
    message = str(info.value)
    assert f"Redis at {config.host}:{config.port} cannot be reached" in message
    assert "REDIS_URL" in message


async def test_closed_client_refuses_commands(redis_url: str) -> None:
    async with open_redis(RedisConfig(url=redis_url)) as redis:
        await redis.execute("PING")
    assert redis.statistics().open_connections == 0
    with pytest.raises(trio.ClosedResourceError):
        await redis.execute("PING")
