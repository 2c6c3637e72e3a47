"""Who makes each request: the door checks, then the caller's API key.

Every route needs a key unless its handler is marked ``open_route`` (anyone
may call it) or ``self_authenticated`` (it decides itself: the dashboard's
page and sign-in). The key comes from the ``Authorization: Bearer`` header,
else from the first credential source that finds one (the dashboard adds its
sign-in cookie as one); the header wins when both are sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

import attrs
from quart import Quart, Request, g, request

from flowqd.api.guard import Guard
from flowqd.api.http import ApiError
from flowqd.auth import ANONYMOUS, KeyRing, Principal

__all__ = [
    "Access",
    "Authenticator",
    "CredentialSource",
    "access_of",
    "open_route",
    "self_authenticated",
]

Access = Literal["key", "open", "self"]
# A key the request carries elsewhere than its Authorization header, or None;
# raises ApiError (403) for a credential the request may not use.
CredentialSource = Callable[[Request], str | None]
Handler = TypeVar("Handler", bound=Callable[..., object])
_ACCESS = "flowqd_access"


def open_route(handler: Handler) -> Handler:
    """Anyone may call the route: no key is asked for."""
    setattr(handler, _ACCESS, "open")
    return handler


def self_authenticated(handler: Handler) -> Handler:
    """The route answers callers without a key itself (``principal()`` is who sent a
    usable one, else anonymous): the hook must not refuse them with 401."""
    setattr(handler, _ACCESS, "self")
    return handler


def access_of(handler: Callable[..., object]) -> Access:
    access: Access = getattr(handler, _ACCESS, "key")
    return access


@attrs.frozen
class Authenticator:
    keys: KeyRing
    guard: Guard
    # endpoint -> access; an endpoint not listed needs a key.
    access: Mapping[str, Access]
    sources: tuple[CredentialSource, ...] = ()

    @classmethod
    def for_app(
        cls, app: Quart, keys: KeyRing, guard: Guard, sources: tuple[CredentialSource, ...] = ()
    ) -> Authenticator:
        """For ``app`` as its routes are now: register every route first."""
        return cls(
            keys,
            guard,
            {endpoint: access_of(handler) for endpoint, handler in app.view_functions.items()},
            sources,
        )

    def caller(self, req: Request) -> Principal | None:
        """The caller; None: refuse (401)."""
        header = req.headers.get("Authorization")
        if not header:
            for source in self.sources:
                token = source(req)
                if token is not None:
                    return self.keys.authenticate(f"Bearer {token}")
        return self.keys.authenticate(header)

    async def admit(self) -> None:
        """The app's before-request hook: sets ``g.principal`` or refuses the request."""
        g.principal = ANONYMOUS
        # Host and Origin first: every route, open ones and unknown paths included.
        self.guard.check(request)
        endpoint = request.endpoint
        access = "open" if endpoint is None else self.access.get(endpoint, "key")
        if access == "open":
            return
        if access == "self":
            with contextlib.suppress(ApiError):
                g.principal = self.caller(request) or ANONYMOUS
            return
        who = self.caller(request)
        if who is None:
            raise ApiError(
                401,
                "missing or unknown API key: send Authorization: Bearer <key> "
                "(an administrator creates keys with `flowqd keys add NAME`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        g.principal = who
