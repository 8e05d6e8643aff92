"""
Bearer-token authentication and scopes.

When the credentials file has C{api_tokens}, every POST needs
C{Authorization: Bearer <token>}; GETs too when C{[auth] protect_reads} is
on. A token grants scopes (C{read}, C{inspect}, C{reboot}, C{disable},
C{aws}); an action names the one it needs. The client name the token belongs
to is recorded with the result. Tokens are compared in constant time and
never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from twisted.web.iweb import IRequest

from slaveapi.config import API_SCOPES, ApiToken
from slaveapi.web.errors import HTTPProblem


@dataclass(frozen=True)
class Client:
    """The API client a request comes from, and what its token allows."""

    name: str
    scopes: frozenset[str]


def authenticate(request: IRequest, tokens: Mapping[str, ApiToken], required: bool) -> Client | None:
    """
    The client C{request} comes from, or C{None} when it need not say.

    @raise HTTPProblem: 401 when a token is required and missing or wrong.
    """
    if not tokens or not required:
        return None
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise _unauthorized("an Authorization: Bearer <token> header is required")
    presented_bytes = presented.strip().encode("utf-8")
    client = None
    for name, entry in tokens.items():
        # Check every token so the time taken does not say which one matched.
        if hmac.compare_digest(presented_bytes, entry.token.reveal().encode("utf-8")):
            client = Client(name, entry.scopes)
    if client is None:
        raise _unauthorized("the bearer token is not valid")
    return client


def authorize(client: Client | None, scope: str | None, what: str) -> None:
    """
    Refuse C{client} (403) unless its token has C{scope}; C{None} needs every
    scope. Anonymous requests (authentication off or not required) pass.

    @param what: what the scope is needed for, for the message.
    """
    if client is None:
        return
    needed = set(API_SCOPES) if scope is None else {scope}
    missing = sorted(needed - client.scopes)
    if missing:
        raise HTTPProblem(
            403,
            "forbidden",
            f"scope: the token of {client.name!r} lacks the {' and '.join(repr(m) for m in missing)} "
            f"scope{'s' if len(missing) > 1 else ''} needed for {what}",
        )


def _unauthorized(msg: str) -> HTTPProblem:
    return HTTPProblem(401, "unauthorized", msg)
