"""The inference API as the page sees it: answers, or one of four clear failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx


class ApiProblem(Exception):  # noqa: N818 - a problem to show, not always an error of ours
    """Something the page shows instead of a result."""


class ApiUnreachable(ApiProblem):
    """No answer at all (wrong URL, API down, network)."""


class ApiNotReady(ApiProblem):
    """The API runs but serves no model yet (no champion)."""


@dataclass
class FieldError:
    """One field the API refused, with what it allows."""

    field: str
    message: str
    allowed: list[str | int] | None = None  # numbers for coded columns
    minimum: int | None = None
    maximum: int | None = None


class ApiRejected(ApiProblem):
    """The API refused the input (422/413): which fields and why."""

    def __init__(self, message: str, errors: list[FieldError], request_id: str = "") -> None:
        super().__init__(message)
        self.errors = errors
        self.request_id = request_id


@dataclass
class ApiFailed(ApiProblem):
    """The API answered with an error of its own (5xx); its request id finds it in the API's logs."""

    status: int
    message: str
    request_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"the API failed (HTTP {self.status}): {self.message} (request id {self.request_id or 'unknown'})"


class ApiClient:
    """A thin, typed client of the endpoints the page uses."""

    def __init__(self, base_url: str, timeout: float = 15.0, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def _call(self, method: str, path: str, raw: bool = False, **kwargs: Any) -> Any:
        """The answer's JSON (``raw``: its bytes, for an image); one of the ApiProblems when it failed."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"the API at {self.base_url} does not answer ({type(exc).__name__}: {exc})") from exc
        if raw and response.status_code < 400:
            return response.content
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:300]}
        if response.status_code < 400:
            return body
        message = body.get("message") or body.get("reason") or response.reason_phrase
        request_id = body.get("request_id", "")
        if response.status_code == 503:
            raise ApiNotReady(message)
        if response.status_code in (413, 422):
            errors = [FieldError(**item) for item in body.get("errors") or []]
            raise ApiRejected(message, errors, request_id)
        raise ApiFailed(response.status_code, message, request_id)

    def ready(self) -> dict[str, Any]:
        """The readiness answer; ApiNotReady with the API's reason when no model is loaded."""
        result: dict[str, Any] = self._call("GET", "/health/ready")
        return result

    def model(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/model")
        return result

    def model_versions(self, limit: int = 100) -> dict[str, Any]:
        """The registry's version history with the gate's decisions (``versions``: the latest ``limit``, newest
        first; ``total``: how many there are)."""
        result: dict[str, Any] = self._call("GET", "/model/versions", params={"limit": limit})
        return result

    def model_plots(self) -> dict[str, bool]:
        """Each plot name the API serves: whether the serving version's run logged it."""
        result: dict[str, bool] = self.model_plots_answer()["plots"]
        return result

    def model_plots_answer(self) -> dict[str, Any]:
        """The whole ``GET /model/plots`` answer: ``plots`` with the ``version`` and ``run_id`` it is about."""
        result: dict[str, Any] = self._call("GET", "/model/plots")
        return result

    def model_plot(self, name: str) -> bytes:
        """One plot of the serving version's run, as PNG bytes."""
        result: bytes = self._call("GET", f"/model/plots/{name}", raw=True)
        return result

    def model_importance(self) -> dict[str, Any]:
        """The serving version's global feature importance (``features``, largest first)."""
        result: dict[str, Any] = self._call("GET", "/model/importance")
        return result

    def predict(self, encounter: dict[str, Any], explain_top: int | None = None) -> dict[str, Any]:
        """One encounter's answer; with ``explain_top``, its explanation too (ApiFailed 409 when the served
        model has none)."""
        params = _explain(explain_top)
        result: dict[str, Any] = self._call("POST", "/predict", json=encounter, params=params)
        return result

    def predict_batch(self, encounters: list[dict[str, Any]], explain_top: int | None = None) -> dict[str, Any]:
        """Several encounters' answers, in order; ``explain_top`` as for ``predict``."""
        params = _explain(explain_top)
        result: dict[str, Any] = self._call("POST", "/predict/batch", json={"encounters": encounters}, params=params)
        return result


def _explain(top: int | None) -> dict[str, str] | None:
    return None if top is None else {"explain": "true", "explain_top": str(top)}
