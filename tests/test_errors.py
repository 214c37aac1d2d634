"""``short_reason``: one readable line from any error, whole causes rather than cut parentheses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from readmission.errors import short_reason

REFUSED = (
    "API request to http://127.0.0.1:5999/api/2.0/mlflow/registered-models/get failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded with url: "
    "/api/2.0/mlflow/registered-models/get?name=x (Caused by NewConnectionError(\"HTTPConnection(host='127.0.0.1', "
    'port=5999): Failed to establish a new connection: [Errno 111] Connection refused"))'
)


def test_the_innermost_cause_and_the_url_are_kept() -> None:
    assert short_reason(RuntimeError(REFUSED)) == (
        "API request to http://127.0.0.1:5999/api/2.0/mlflow/registered-models/get failed: "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    too_many = "API request to http://h/x failed with exception Pool(): Max retries (Caused by ResponseError('too many 503 error responses'))"
    assert short_reason(RuntimeError(too_many)) == "API request to http://h/x failed: too many 503 error responses"
    resolve = "Pool(host='h'): Max retries (Caused by NewConnectionError('<urllib3.HTTPSConnection object at 0x7f>: Failed to resolve h'))"
    assert short_reason(RuntimeError(resolve)) == "NewConnectionError: Failed to resolve h"


def test_a_timeout_names_no_object_address() -> None:
    """Was: `failed: <urllib3.connection.HTTPConnection object at 0x7f0>, 'Connection to ... timed out.` ."""
    timeout = (
        "API request to http://10.0.0.1:5000/api/2.0/x failed with exception HTTPConnectionPool(host='10.0.0.1', "
        "port=5000): Max retries exceeded with url: /x (Caused by ConnectTimeoutError(<urllib3.connection."
        "HTTPConnection object at 0x7f0>, 'Connection to 10.0.0.1 timed out. (connect timeout=120)'))"
    )
    assert short_reason(RuntimeError(timeout)) == (
        "API request to http://10.0.0.1:5000/api/2.0/x failed: Connection to 10.0.0.1 timed out. (connect timeout=120)"
    )


def test_a_long_word_is_cut_not_dropped() -> None:
    assert short_reason(RuntimeError("a " + "b" * 400), 100) == "a " + "b" * 97 + "…"


def test_an_empty_message_gives_the_error_type() -> None:
    assert short_reason(TimeoutError()) == "TimeoutError"


@given(st.text(), st.integers(min_value=20, max_value=400))
def test_always_one_nonempty_line_within_the_limit(text: str, limit: int) -> None:
    line = short_reason(RuntimeError(text), limit)
    assert line and "\n" not in line and "\r" not in line and len(line) <= limit


class _RefusalError(Exception):
    """An MLflow-like error: a code and a message."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


def test_access_advice_tells_missing_refused_and_forbidden_apart() -> None:
    from readmission.errors import access_advice

    refused = _RefusalError("UNAUTHENTICATED", "API request to /api/2.0/mlflow/... failed with error code 401 != 200")
    forbidden = _RefusalError("PERMISSION_DENIED", "API request to ... failed with error code 403 != 200")
    none_given = access_advice(refused, None)
    assert none_given is not None and "none was given" in none_given
    assert "MLFLOW_TRACKING_USERNAME=trainer" in none_given
    wrong = access_advice(refused, "trainer")
    assert wrong is not None and "refused the credentials of user trainer (401)" in wrong
    denied = access_advice(forbidden, "inference", ("inference", "MLFLOW_INFERENCE_PASSWORD in x"))
    assert denied is not None and "MLflow user inference may not do this (403): its grants" in denied
    other = access_advice(forbidden, "inference")  # a trainer's command run as the inference user
    assert other is not None and "may not do this (403): it needs the trainer user" in other
    assert access_advice(_RefusalError("INTERNAL_ERROR", "error code 500"), "trainer") is None
    assert access_advice(ConnectionError("Connection refused"), "trainer") is None
