"""README.md's quick start, run as written: its curl commands against a real daemon."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import attrs
import httpx
import orjson
import trio

from tests.daemonproc import start_daemon
from tests.faults.helpers import poll

README = Path(__file__).resolve().parent.parent / "README.md"


@attrs.frozen
class Curl:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    comment: str  # what the README says the answer is


def readme_curls() -> list[Curl]:
    """Every curl command in README.md's shell blocks, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for found in re.finditer(r"^curl ", text, flags=re.M):
        command, comment = _split_line(text[found.start() :])
        commands.append(_parse(shlex.split(command)[1:], comment))
    return commands


def _split_line(text: str) -> tuple[str, str]:
    """A shell command (a quoted body may span lines) and the comment after it."""
    quoted = False
    for i, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "\n":
            return text[:i], ""
        elif not quoted and char == "#" and text[i - 1].isspace():
            return text[:i], text[i + 1 :].partition("\n")[0].strip()
    return text, ""


def _parse(words: list[str], comment: str) -> Curl:
    method, url, headers, body = "GET", "", {}, None
    it = iter(words)
    for word in it:
        if word == "-X":
            method = next(it)
        elif word == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            body = next(it).encode()
        elif word.startswith("http"):
            url = word
    return Curl(method, url, headers, body, comment)


def test_readme_lists_the_quick_start_requests() -> None:
    routes = [(c.method, re.sub(r"^http://[^/]+", "", c.url)) for c in readme_curls()]
    assert routes == [
        ("GET", "/api/v1/ping"),
        ("GET", "/readyz"),
        ("PUT", "/api/v1/flows/greet"),
        ("POST", "/api/v1/prediction/greet"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/<id>"),
        ("POST", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs"),
    ]


async def test_readme_quick_start_works_as_written(tmp_path: Path) -> None:
    curls = readme_curls()
    with trio.fail_after(30):
        async with (
            start_daemon(["--role", "all"], cwd=str(tmp_path)) as daemon,
            httpx.AsyncClient(timeout=5) as client,
        ):
            bases = {"http://127.0.0.1:3000": daemon.api, "http://127.0.0.1:5566": daemon.health}
            job_id = None
            for curl in curls:
                url = curl.url
                for written, real in bases.items():
                    url = url.replace(written, real)
                if job_id is not None:
                    url = url.replace("<id>", job_id)
                if curl.url.endswith("/jobs/<id>"):
                    # The job runs meanwhile: the README shows its finished state.
                    async def finished(url: str = url) -> bool:
                        return (await client.get(url)).json()["status"] == "completed"

                    await poll(finished)
                answer = await client.request(
                    curl.method, url, headers=curl.headers, content=curl.body
                )
                assert answer.status_code < 300, (curl, answer.text)
                if curl.url.endswith("/api/v1/jobs"):
                    assert answer.status_code == 202
                    assert orjson.loads(curl.body or b"")["inputs"] == {"question": "world"}
                    job_id = answer.json()["id"]
                    assert answer.headers["location"] == f"/api/v1/jobs/{job_id}"
                _check_comment(curl, answer)
            assert job_id is not None


def _check_comment(curl: Curl, answer: httpx.Response) -> None:
    """What the README's comment after a command says the answer is."""
    said = curl.comment
    if said == "pong":
        assert answer.text == "pong"
    elif said.startswith("{"):
        assert answer.json() == orjson.loads(said)
    elif said.startswith('"status"'):
        assert answer.json() | orjson.loads("{" + said + "}") == answer.json()
    if "prediction" in curl.url:
        assert answer.json()["text"] == "Hello, world!"


def test_the_test_script_keeps_the_readme_venv_clean() -> None:
    # The example plugin adds node type `reverse`: it belongs in the tests'
    # virtualenv, never in the .venv the README's first command runs flowqd from.
    script = (README.parent / "scripts" / "test.sh").read_text()
    assert "VENV=${FLOWQD_TEST_VENV:-.venv-test}" in script
    [install] = re.findall(r'^"\$VENV/bin/python" -m pip install .*\n.*$', script, flags=re.M)
    assert "plugins/flowqd-example" in install
    assert ".venv/" not in script.replace(".venv-test", "")
    assert ".venv-test/" in (README.parent / ".gitignore").read_text().splitlines()
