"""Every error the framework raises is problem+json with its own status: none becomes a 500."""

import pytest
from litestar import Litestar, get
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.testing import TestClient

from gateway.api.problems import EXCEPTION_HANDLERS


@pytest.mark.parametrize(
    ("raised", "status", "title"),
    [
        (NotAuthorizedException("no"), 401, "Unauthorized"),
        (PermissionDeniedException("no"), 403, "Forbidden"),
        (HTTPException(status_code=418, detail="short and stout"), 418, "I'm a Teapot"),
        (HTTPException(status_code=429, detail="slow down"), 429, "Too Many Requests"),
    ],
)
def test_framework_client_errors_keep_their_status_as_a_problem(raised, status, title):
    @get("/boom")
    async def boom() -> None:
        raise raised

    app = Litestar([boom], exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    with TestClient(app) as client:
        response = client.get("/boom")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "about:blank" and body["status"] == status and body["title"] == title
    assert "x-request-id" in response.headers
