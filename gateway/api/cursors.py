"""Opaque page cursors of the paginated lists (GET /api/v1/batches, GET /api/v1/webhooks/deliveries):
where the next page starts, as unpadded URL-safe base64 of a text only the list reads back. A cursor
this API did not give is a 422 validation-failed, never a 500 or a page from elsewhere."""

import base64
import binascii

from gateway.api.openapi import problem_example, problem_responses
from gateway.errors import Refused

BAD_CURSOR = problem_responses(
    "A cursor this API did not give",
    problem_example("validation-failed", "the cursor is not one this API gave"),
)


def encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def refused() -> Refused:
    """The answer to a cursor this API did not give."""
    return Refused(
        "validation-failed", "the cursor is not one this API gave", [("cursor", "invalid_cursor", "is not a cursor")]
    )


def decode(cursor: str) -> str:
    """The text of a cursor `encode` made; Refused (422) for anything else."""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise refused() from None
