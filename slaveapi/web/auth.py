"""
Bearer-token authentication.

When the credentials file has C{api_tokens}, every POST needs
C{Authorization: Bearer <token>}; GETs too when C{[auth] protect_reads} is
on. The client name the token belongs to is recorded with the result.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from typing import Mapping

from twisted.web.iweb import IRequest

from slaveapi.config import Secret
from slaveapi.web.errors import HTTPProblem


def authenticate(request: IRequest, tokens: Mapping[str, Secret], required: bool) -> str | None:
    """
    The name of the client C{request} comes from, or C{None} when it need not say.

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
    for name, token in tokens.items():
        # Check every token so the time taken does not say which one matched.
        if hmac.compare_digest(presented_bytes, token.reveal().encode("utf-8")):
            client = name
    if client is None:
        raise _unauthorized("the bearer token is not valid")
    return client


def _unauthorized(msg: str) -> HTTPProblem:
    return HTTPProblem(401, "unauthorized", msg)
