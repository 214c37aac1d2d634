"""Dependencies of the endpoints: the service's parts, read from ``app.state`` (set by ``create_app``).

They are ``async`` so FastAPI calls them on the event loop instead of sending them to its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inference_api.components import Components


async def components(request: Request) -> Components:
    """The parts of the app answering this request."""
    parts: Components = request.app.state.components
    return parts


ComponentsDep = Annotated[Components, Depends(components)]
