"""The queue dashboard at ``/admin/queues``: one page, its static files, cookie sign-in.

The page is plain HTML, CSS and JavaScript shipped in ``flowqd/api/static``
and read through importlib.resources (so it works inside the one-file
binary). It talks only to the JSON API, like any other client.

Sign-in: when API keys are configured the page asks for one, and
``POST /admin/queues/session`` answers with an HttpOnly, SameSite=Strict
cookie holding a signed session token (``flowqd/sessions.py``), never the
key: page scripts and the browser's cookie store never hold it. The token
names the key, expires after ``COOKIE_MAX_AGE_S`` and ends as soon as the key
is revoked. The API accepts that cookie instead of the bearer header, but only
for same-origin requests (see ``cookie_token``, the credential source the
app's authentication adds).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from flowqd.api.authn import self_authenticated
from flowqd.api.context import context, principal
from flowqd.api.http import ApiError, Incoming, json_response, read_json, require_object
from flowqd.auth import ANONYMOUS, KeyRing, Principal

__all__ = ["COOKIE", "CSRF_HEADER", "blueprint", "cookie_token"]

blueprint = Blueprint("dashboard", __name__)

COOKIE = "flowqd_session"
CSRF_HEADER = "X-Flowqd-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE_MAX_AGE_S = 12 * 3600
# Everything the page loads comes from this server: no inline script, no CDN.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def cookie_token(req: Incoming, keys: KeyRing) -> Principal | None:
    """Who the session cookie stands for, for same-origin requests only; 403 for anything
    else, 401 when its session is over (expired, forged, or its key revoked).

    A cookie rides along on requests other sites make, so it proves nothing
    about who wrote the request. SameSite=Strict keeps it off cross-site
    requests, but another port or subdomain of the same host is "same-site"
    and would still get it. So, for requests that change state, the page sends
    the custom header X-Flowqd-CSRF: a cross-origin page can only add a custom
    header through CORS, whose preflight flowqd never approves (it sends no
    Access-Control-Allow-* headers), and HTML forms cannot add headers at all.
    The header works in every browser and behind any proxy, where comparing
    Origin with Host breaks when a proxy rewrites Host. Sec-Fetch-Site, which
    current browsers send on every request, additionally turns away
    cross-origin reads and writes before they reach a route.
    """
    cookie = req.cookies.get(COOKIE)
    if not cookie:
        return None
    site = req.headers.get("Sec-Fetch-Site")
    # "none": the user typed the address or used a bookmark; fine for reading.
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(
            403,
            "the dashboard's sign-in cookie is accepted only on requests from "
            "the dashboard's own origin; other clients send "
            "Authorization: Bearer <key>",
        )
    if req.method not in SAFE_METHODS and (site == "none" or not req.headers.get(CSRF_HEADER)):
        raise ApiError(
            403,
            f"a request signed in with the dashboard's cookie must carry the "
            f"{CSRF_HEADER} header (the dashboard's scripts send it); other "
            "clients send Authorization: Bearer <key>",
        )
    who = keys.session(cookie)
    if who is None:
        raise ApiError(
            401,
            "the dashboard session is over (it expired, or its key was revoked or "
            "replaced): sign in again on the dashboard page",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return who


def _signed_in(keys: KeyRing, who: Principal) -> bool:
    # With keys configured, an anonymous caller (auth.allow_anonymous) is not
    # signed in: the dashboard is never open to callers without a key.
    return not keys.has_keys or who.name is not None


def _who(keys: KeyRing, who: Principal) -> dict[str, object]:
    return {"name": who.name, "admin": who.admin, "open": not keys.has_keys}


def _set_cookie(response: Response, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.scheme == "https",
    )


def _require_enabled() -> None:
    if not context().config.dashboard.enabled:
        raise ApiError(
            404,
            "the queue dashboard is off: set dashboard.enabled = true in "
            "flowqd.toml (or ENABLE_BULLMQ_DASHBOARD=true) and restart",
        )


@blueprint.get("/admin/queues")
@self_authenticated
async def dashboard_page() -> Response:
    _require_enabled()
    ctx = context()
    page = ctx.assets["index.html"]
    who = principal()
    cookie = request.cookies.get(COOKIE)
    if cookie and not _signed_in(ctx.keys, who):
        # A navigation from a sibling origin (same site, another port) gets the
        # cookie refused by the hook; the page itself holds no data, so it may
        # open signed in, and its own requests are same-origin.
        who = ctx.keys.session(cookie) or who
    signed_in = _signed_in(ctx.keys, who)
    # Browsers name text/html when they navigate; scripts and curl (*/*) get JSON.
    wants_html = "text/html" in request.headers.get("Accept", "")
    if not signed_in and not wants_html:
        raise ApiError(
            401,
            "sign in: open this page in a browser, or send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # The same page either way: it opens on its sign-in form when the status is 401.
    body = page.body.replace(b"{{view}}", b"app" if signed_in else b"signin")
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    if not signed_in:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(
        body, status=200 if signed_in else 401, headers=headers, content_type=page.content_type
    )


@blueprint.get("/admin/queues/static/<path:name>")
@self_authenticated
async def dashboard_static(name: str) -> Response:
    # Code and styles only, no data: loading them needs no key (the sign-in form uses them).
    _require_enabled()
    asset = context().assets.get(name)
    if asset is None or name == "index.html":
        raise ApiError(404, f"no dashboard file {name!r}")
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return Response(b"", status=304, headers=headers)
    return Response(asset.body, headers=headers, content_type=asset.content_type)


@blueprint.get("/admin/queues/session")
@self_authenticated
async def dashboard_session() -> Response:
    _require_enabled()
    keys = context().keys
    who = principal()
    if not _signed_in(keys, who):
        raise ApiError(401, "not signed in", headers={"WWW-Authenticate": "Bearer"})
    return json_response(_who(keys, who))


@blueprint.post("/admin/queues/session")
@self_authenticated
async def dashboard_sign_in() -> Response:
    _require_enabled()
    # Sign-in is held to the same rule as actions: another origin must not
    # sign a browser in with a key of its choosing.
    if request.headers.get(
        "Sec-Fetch-Site", "same-origin"
    ) != "same-origin" or not request.headers.get(CSRF_HEADER):
        raise ApiError(403, f"sign in from the dashboard page (its requests carry {CSRF_HEADER})")
    body = require_object(await read_json(request))
    key = body.get("key")
    if not isinstance(key, str) or not key.strip():
        raise ApiError(
            422,
            'send {"key": "<an API key>"}',
            problems=[{"path": "$.key", "message": "expected a non-empty string"}],
        )
    keys = context().keys
    if not keys.has_keys:
        return json_response(_who(keys, principal()))
    who = keys.authenticate(f"Bearer {key.strip()}")
    if who is None or who is ANONYMOUS or who.name is None:
        raise ApiError(401, "unknown API key: use a key printed by `flowqd keys add NAME`")
    response = json_response(_who(keys, who))
    # The cookie's Max-Age and the token's own expiry agree; the server
    # checks the latter, since a client can keep a cookie as long as it likes.
    _set_cookie(response, keys.issue_session(who, COOKIE_MAX_AGE_S), COOKIE_MAX_AGE_S)
    return response


@blueprint.delete("/admin/queues/session")
@self_authenticated
async def dashboard_sign_out() -> Response:
    _require_enabled()
    if not request.headers.get(CSRF_HEADER):
        raise ApiError(403, f"sign out from the dashboard page (its requests carry {CSRF_HEADER})")
    response = Response(b"", status=204)
    _set_cookie(response, "", 0)
    return response
