"""The dashboard's files (flowqd/api/static), read once at start-up.

Read through importlib.resources, so they are found inside the one-file
binary too.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import attrs

from flowqd.errors import ConfigError

__all__ = ["ASSETS", "Asset", "load_assets"]

ASSETS = ("index.html", "dashboard.js", "schedules.js", "dashboard.css", "favicon.svg")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@attrs.frozen
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The page's files from ``flowqd/api/static``.

    Named one by one (not listed from the folder) so a build that lost one
    fails here, at start-up, with the setting to change.
    """
    assets: dict[str, Asset] = {}
    folder = resources.files("flowqd.api") / "static"
    for name in ASSETS:
        try:
            body = (folder / name).read_bytes()
        except OSError:
            raise ConfigError(
                [
                    f"dashboard.enabled: the dashboard's file flowqd/api/static/{name} is missing "
                    "from this installation; reinstall flowqd (or rebuild the binary with "
                    "packaging/flowqd.spec), or set dashboard.enabled = false"
                ]
            ) from None
        content_type = CONTENT_TYPES["." + name.rpartition(".")[2]]
        assets[name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return assets
