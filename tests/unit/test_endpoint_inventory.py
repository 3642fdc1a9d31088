"""The inventory of what the partners' port serves (OWASP API9, improper inventory management): every
route is either a documented operation or the API's own documentation, and nothing meant for operators
is among them (API5: /metrics lives on the operations port)."""

import re

from gateway.api.app import create_app
from gateway.settings import Settings

# what the partners' port serves besides the documented operations: the documentation itself
DOCUMENTATION = {
    "/docs",
    "/docs/{path}",
    "/docs/openapi.json",
    "/docs/oauth2-redirect.html",
    "/docs/assets/{file_path}",
}
PARTNER_OPERATIONS = {
    ("POST", "/api/v1/transactions"),
    ("POST", "/api/v1/transactions/bulk"),
    ("GET", "/api/v1/transactions/{transaction_id}"),
    ("GET", "/api/v1/batches/{batch_id}"),
    ("GET", "/api/v1/batches"),
    ("GET", "/api/v1/webhooks/deliveries"),
    ("POST", "/api/v1/webhooks/deliveries/{event_id}/resend"),
}
PROBES = {("GET", "/health"), ("GET", "/ready")}


def test_every_route_is_documented_or_documentation_and_none_is_for_operators():
    app = create_app(Settings())  # no lifespan: the routes need neither Redis nor Kafka
    served = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {batch_id:str} -> {batch_id}
        if path in DOCUMENTATION:
            continue
        served |= {(method, path) for method in route.methods if method not in ("OPTIONS", "HEAD")}
    assert served == PARTNER_OPERATIONS | PROBES
    documented = {
        (method.upper(), path) for path, item in app.openapi_schema.to_schema()["paths"].items() for method in item
    }
    assert documented == served
