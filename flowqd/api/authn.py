"""Who makes each request: the door checks, then the caller's API key.

Every route needs a key unless its handler is marked ``open_route`` (anyone
may call it) or ``self_authenticated`` (it decides itself: the dashboard's
page and sign-in). The key comes from the ``Authorization: Bearer`` header,
else the caller from the first credential source that finds a credential (the
dashboard adds its signed session cookie as one); the header wins when both
are sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

import attrs
from quart import Quart, g, request

from flowqd.api.guard import Guard
from flowqd.api.http import ApiError, Incoming
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
# Who a credential the request carries elsewhere than its Authorization header
# proves the caller is (checked against the key ring), or None when it carries
# none; raises ApiError for one it may not use (403) or that no longer holds (401).
CredentialSource = Callable[[Incoming, KeyRing], Principal | None]
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

    def caller(self, req: Incoming) -> Principal | None:
        """The caller; None: refuse (401)."""
        header = req.headers.get("Authorization")
        if not header:
            for source in self.sources:
                who = source(req, self.keys)
                if who is not None:
                    return who
        return self.keys.authenticate(header)

    async def admit(self) -> None:
        """The app's before-request hook: sets ``g.principal`` or refuses the request."""
        g.principal = ANONYMOUS
        g.principal = self.principal(request, request.endpoint)

    def principal(self, req: Incoming, endpoint: str | None) -> Principal:
        """Who sent ``req``, for the route ``endpoint`` (None: no route matched);
        ApiError (421, 403, 401) for a request refused."""
        # Host and Origin first: every route, open ones and unknown paths included.
        self.guard.check(req)
        access = "open" if endpoint is None else self.access.get(endpoint, "key")
        if access == "open":
            return ANONYMOUS
        if access == "self":
            try:
                return self.caller(req) or ANONYMOUS
            except ApiError:
                return ANONYMOUS
        who = self.caller(req)
        if who is None:
            raise ApiError(
                401,
                "missing or unknown API key: send Authorization: Bearer <key> "
                "(an administrator creates keys with `flowqd keys add NAME`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return who
