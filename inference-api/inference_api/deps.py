"""Dependencies of the endpoints: the service's parts, read from ``app.state`` (set by ``create_app``).

They are ``async`` so FastAPI calls them on the event loop instead of sending them to its thread pool.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_api.components import Components


async def components(request: Request) -> Components:
    """The parts of the app answering this request."""
    parts: Components = request.app.state.components
    return parts


ComponentsDep = Annotated[Components, Depends(components)]


def require_token(request: Request, token: SecretStr | None) -> None:
    """Refuse (401) a request without ``Authorization: Bearer <token>``; ``token`` None (DEVELOPMENT_MODE
    without RELOAD_TOKEN) lets every request in. The scheme is case-insensitive (RFC 9110 11.1); the token is
    compared in constant time."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise StarletteHTTPException(
            401, "a valid token is required (Authorization: Bearer <RELOAD_TOKEN>)", {"WWW-Authenticate": "Bearer"}
        )
