"""[egress] for the http and llm nodes, against loopback servers: checked on the addresses the
connection uses, after DNS; and limits.max_response_bytes on what they read.

Each test installs a worker's settings (``install``) in its own task, as Worker.run does.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import trio
import trio.socket

from flowqd import Executor, NodeError
from flowqd.auth import hash_key
from flowqd.config import Config
from flowqd.errors import ConfigError
from flowqd.executors._egress import EgressPolicy, install, private_kind
from flowqd.testing import run_executor
from tests.api.conftest import bearer, make_config, open_api
from tests.flows.httpserver import (
    Request,
    open_http_server,
    send_head,
    send_json,
    streaming_llm,
)

KEYS = f'auth.keys=["ops:{hash_key("fqd_ops")}:admin"]'
PRIVATE_REFUSED = (
    "private addresses are refused because API keys are configured; add it to egress.allow "
    "to permit it (egress.allow then lists all that may be reached)"
)


async def _ok(request: Request, stream: trio.SocketStream) -> None:
    await send_json(stream, 200, {"path": request.path})


async def get(executors: dict[str, Executor], url: str) -> Any:
    output, _ = await run_executor(executors["http"], {"url": url})
    return output


async def refusal(executors: dict[str, Executor], url: str) -> str:
    with pytest.raises(NodeError) as info:
        await get(executors, url)
    return str(info.value)


async def test_keys_and_private_auto_refuse_loopback_before_connecting(
    executors: dict[str, Executor],
) -> None:
    install(make_config(KEYS))
    with trio.fail_after(10):
        async with open_http_server(_ok) as server:
            port = server.url.rsplit(":", 1)[1]
            assert await refusal(executors, f"{server.url}/x") == (
                f"egress refused 127.0.0.1 (loopback) for host '127.0.0.1': {PRIVATE_REFUSED}"
            )
            # A name is checked on what it resolves to; IPv4-mapped IPv6 is its IPv4 address.
            assert await refusal(executors, f"http://localhost:{port}/x") in {
                f"egress refused {address} (loopback) for host 'localhost': {PRIVATE_REFUSED}"
                for address in ("127.0.0.1", "::1")
            }
            assert await refusal(executors, f"http://[::ffff:127.0.0.1]:{port}/x") == (
                f"egress refused 127.0.0.1 (loopback) for host '::ffff:127.0.0.1': "
                f"{PRIVATE_REFUSED}"
            )
            assert server.requests == []  # nothing reached the server


async def test_allow_permits_and_deny_wins(executors: dict[str, Executor]) -> None:
    with trio.fail_after(10):
        async with open_http_server(_ok) as server:
            install(make_config(KEYS, "egress.allow=127.0.0.1"))
            assert (await get(executors, f"{server.url}/allowed"))["json"] == {"path": "/allowed"}

            install(make_config(KEYS, "egress.allow=127.0.0.0/8", "egress.deny=127.0.0.1"))
            assert await refusal(executors, f"{server.url}/x") == (
                "egress refused 127.0.0.1 for host '127.0.0.1': egress.deny has '127.0.0.1'"
            )
            # A non-empty allow list is all that may be reached, host names included.
            install(make_config("egress.allow=*.example.com,LOCALHOST"))
            port = server.url.rsplit(":", 1)[1]
            local = await get(executors, f"http://localhost:{port}/by-name")
            assert local["json"] == {"path": "/by-name"}
            assert await refusal(executors, f"{server.url}/x") == (
                "egress refused 127.0.0.1 for host '127.0.0.1': neither is in egress.allow, "
                "which lists all that may be reached; add the host or the address to "
                "egress.allow to permit it"
            )
            install(make_config("egress.private=deny"))  # without keys
            assert 'because egress.private is "deny"' in await refusal(executors, server.url)
            assert [r.path for r in server.requests] == ["/allowed", "/by-name"]


async def test_without_keys_the_default_reaches_loopback(executors: dict[str, Executor]) -> None:
    install(make_config())
    assert EgressPolicy.from_config(make_config()).open
    with trio.fail_after(10):
        async with open_http_server(_ok) as server:
            assert (await get(executors, f"{server.url}/open"))["status"] == 200


async def test_the_connection_uses_the_address_that_was_checked(
    executors: dict[str, Executor],
) -> None:
    # A rebinding name: 127.0.0.1 (allowed) when first asked, then 127.0.0.2 (denied). A
    # client that resolves again to connect would reach the denied address.
    class Rebinding(trio.abc.HostnameResolver):
        def __init__(self) -> None:
            self.asked = 0

        async def getaddrinfo(
            self,
            host: bytes | str | None,
            port: Any,
            family: int = 0,
            type: int = 0,
            proto: int = 0,
            flags: int = 0,
        ) -> Any:
            self.asked += 1
            address = "127.0.0.1" if self.asked == 1 else "127.0.0.2"
            return [(trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", (address, int(port)))]

        async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
            raise NotImplementedError

    resolver = Rebinding()
    trio.socket.set_custom_hostname_resolver(resolver)
    install(make_config("egress.allow=rebind.test,127.0.0.1", "egress.deny=127.0.0.2"))
    with trio.fail_after(10):
        async with open_http_server(_ok) as server:
            port = server.url.rsplit(":", 1)[1]
            assert (await get(executors, f"http://rebind.test:{port}/r"))["status"] == 200
            assert resolver.asked == 1
            assert "egress.deny has '127.0.0.2'" in await refusal(
                executors, f"http://rebind.test:{port}/r"
            )


async def test_llm_node_is_refused_likewise(executors: dict[str, Executor]) -> None:
    install(make_config(KEYS))
    with trio.fail_after(10):
        async with open_http_server(streaming_llm(["hi"])) as server:
            with pytest.raises(NodeError) as info:
                await run_executor(
                    executors["llm"],
                    {"base_url": f"{server.url}/v1", "model": "m"},
                    {"prompt": "hello"},
                )
            assert str(info.value) == (
                f"egress refused 127.0.0.1 (loopback) for host '127.0.0.1': {PRIVATE_REFUSED}"
            )
            assert server.requests == []


async def test_a_worker_applies_its_config_to_the_flows_it_runs() -> None:
    with trio.fail_after(20):
        async with open_http_server(_ok) as server:
            flow = {
                "id": "fetch",
                "nodes": [
                    {
                        "id": "get",
                        "type": "http",
                        "label": "Get",
                        "params": {"url": f"{server.url}/x"},
                    }
                ],
                "output": "get",
            }
            async with open_api(KEYS, flows=[flow]) as api:
                response = await api.client.post(
                    "/api/v1/prediction/fetch", json={"question": "q"}, headers=bearer("fqd_ops")
                )
                assert response.status_code == 500, response.text
                assert response.json()["message"] == (
                    "node 'get' failed: egress refused 127.0.0.1 (loopback) for host "
                    f"'127.0.0.1': {PRIVATE_REFUSED}"
                )
            async with open_api(flows=[flow]) as api:  # no keys: loopback is fine
                response = await api.client.post("/api/v1/prediction/fetch", json={"question": "q"})
                assert response.status_code == 200, response.text
            assert [r.path for r in server.requests] == ["/x"]


def test_bad_entries_stop_start_up_naming_them() -> None:
    with pytest.raises(ConfigError) as info:
        make_config("egress.allow=10.0.0.0/8,http://x.example.com", "egress.deny=10.0.0.0/33")
    assert info.value.problems == [
        "--set egress.allow: egress.allow: expected a host name (api.example.com), *.domain "
        "(*.example.com), an IP address or a CIDR network (10.0.0.0/8), got "
        "'http://x.example.com' (entry 1)",
        "--set egress.deny: egress.deny: expected a host name (api.example.com), *.domain "
        "(*.example.com), an IP address or a CIDR network (10.0.0.0/8), got '10.0.0.0/33' "
        "(entry 0)",
    ]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not globally routable"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_private_kinds(address: str, kind: str | None) -> None:
    policy = EgressPolicy.from_config(make_config(KEYS))
    ip = ipaddress.ip_address(address)
    refused = policy.refusal("metadata", ip)
    if kind is None:
        assert refused is None
    else:
        assert refused is not None and f"({kind}) for host 'metadata'" in refused
    unwrapped = getattr(ip, "ipv4_mapped", None) or ip
    assert private_kind(unwrapped) == kind


# ---- limits.max_response_bytes ------------------------------------------------------


def limited(limit: int) -> Config:
    return make_config(f"limits.max_response_bytes={limit}")


async def _big(request: Request, stream: trio.SocketStream) -> None:
    size = int(request.path.split("?")[0].rsplit("/", 1)[1])
    headers = [("Content-Type", "text/plain")]
    if request.path.startswith("/declared/"):
        headers.append(("Content-Length", str(size)))
    await send_head(stream, 200, headers)
    if request.path.startswith("/declared/"):
        await trio.sleep_forever()  # refused on its header: the body is never read
    await stream.send_all(b"x" * size)


async def test_http_response_is_bounded(executors: dict[str, Executor]) -> None:
    install(limited(1000))
    with trio.fail_after(10):
        async with open_http_server(_big) as server:
            assert (await get(executors, f"{server.url}/chunked/1000"))["text"] == "x" * 1000
            head, _ = await run_executor(
                executors["http"], {"url": f"{server.url}/declared/5000", "method": "HEAD"}
            )
            assert head["status"] == 200 and head["text"] == ""
            for path in ("/chunked/1001", "/chunked/100000", "/declared/5000"):
                assert await refusal(executors, f"{server.url}{path}?secret=1") == (
                    f"GET {server.url}{path} sent more than limits.max_response_bytes (1000 "
                    "bytes); raise limits.max_response_bytes or ask for less"
                )


def _sse(*lines: bytes) -> Any:
    async def handler(request: Request, stream: trio.SocketStream) -> None:
        await send_head(stream, 200, [("Content-Type", "text/event-stream")])
        for line in lines:
            await stream.send_all(line)
        await trio.sleep_forever()  # the limit, not the end of the stream, stops the node

    return handler


async def test_llm_stream_is_bounded_even_without_line_breaks(
    executors: dict[str, Executor],
) -> None:
    install(limited(5000))
    token = b'data: {"choices":[{"index":0,"delta":{"content":"ab"}}]}\n\n'
    for handler in (_sse(*[token] * 1000), _sse(b"data: " + b"x" * 4096, b"y" * 4096)):
        with trio.fail_after(10):
            async with open_http_server(handler) as server:
                with pytest.raises(NodeError) as info:
                    await run_executor(
                        executors["llm"],
                        {"base_url": f"{server.url}/v1", "model": "m"},
                        {"prompt": "hello"},
                    )
        assert str(info.value) == (
            f"LLM server {server.url}/v1 sent more than limits.max_response_bytes (5000 bytes); "
            "raise limits.max_response_bytes or ask for less"
        )


async def test_llm_whole_completion_is_bounded(executors: dict[str, Executor]) -> None:
    install(limited(100))

    async def whole(request: Request, stream: trio.SocketStream) -> None:
        await send_json(stream, 200, {"choices": [{"message": {"content": "z" * 200}}]})

    with trio.fail_after(10):
        async with open_http_server(whole) as server:
            with pytest.raises(NodeError, match=r"sent more than limits\.max_response_bytes"):
                await run_executor(
                    executors["llm"],
                    {"base_url": f"{server.url}/v1", "model": "m"},
                    {"prompt": "hello"},
                )
