"""The OpenAPI 3.1 document describes the request body and every response code with an example."""

import json

from gateway.api.app import create_app
from gateway.settings import Settings
from settlement.webhooks import EVENT_TYPES


def _document() -> dict:
    # no lifespan: the document needs neither Redis nor Kafka
    app = create_app(Settings())
    return app.openapi_schema.to_schema()


def test_document_is_openapi_3_1_with_the_transaction_operation():
    document = _document()
    assert document["openapi"].startswith("3.1")
    operation = document["paths"]["/api/v1/transactions"]["post"]
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"]["additionalProperties"] is False
    assert set(body["schema"]["required"]) >= {"transaction_id", "amount", "source_currency"}
    assert body["examples"]["seed"]["value"]["transaction_id"] == "txn_001"
    assert {p["name"] for p in operation["parameters"]} == {"Idempotency-Key", "traceparent"}


def test_every_response_code_has_an_example():
    responses = _document()["paths"]["/api/v1/transactions"]["post"]["responses"]
    for status in ("200", "202", "400", "409", "413", "415", "422", "503"):
        assert status in responses, status
        content = next(iter(responses[status]["content"].values()))
        assert content.get("examples"), f"{status} has no example"


def test_probes_document_their_bodies_and_the_503_of_ready():
    paths = _document()["paths"]
    health = paths["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == {"$ref": "#/components/schemas/Health"}
    ready = paths["/ready"]["get"]["responses"]
    assert set(ready) == {"200", "503"}
    assert ready["503"]["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/NotReady"}
    assert ready["503"]["headers"]["Retry-After"]["required"] is True
    assert "/metrics" not in paths  # on the operations port only (gateway.api.operations_port)


def test_every_response_documents_x_request_id_and_every_error_is_a_problem():
    for path, item in _document()["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                where = f"{method.upper()} {path} {status}"
                assert response["headers"]["X-Request-ID"]["required"] is True, where
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], where


def test_the_webhook_deliveries_document_every_answer_and_filter_by_the_core_s_event_types():
    paths = _document()["paths"]
    listing = paths["/api/v1/webhooks/deliveries"]["get"]
    parameters = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert set(parameters) == {"state", "event_type", "cursor", "limit"}
    assert set(parameters["event_type"]["enum"]) - {None} == EVENT_TYPES  # the filter's enum is the core's set
    assert set(parameters["state"]["enum"]) - {None} == {"pending", "delivered", "failed"}
    resend = paths["/api/v1/webhooks/deliveries/{event_id}/resend"]["post"]
    for operation, statuses in ((listing, ("200", "400", "401", "422", "429", "503")), (resend, ("202", "404", "409"))):
        assert set(statuses) <= set(operation["responses"])
        assert operation["security"] == [{"partnerKey": []}]
        for status in statuses:
            content = next(iter(operation["responses"][status]["content"].values()))
            assert content.get("examples"), f"{status} has no example"
    pending = resend["responses"]["409"]["content"]["application/problem+json"]["examples"]
    assert next(iter(pending.values()))["value"]["type"].endswith("/delivery-pending")


def test_the_document_describes_every_webhook_a_partner_receives_with_its_signature_headers():
    """OpenAPI 3.1 `webhooks`: one POST per event type, its Standard Webhooks headers, and a body whose data
    is the status API's schema (tests/integration/test_webhook_outbox.py validates the processor's bodies)."""
    document = create_app(Settings()).openapi_schema.to_schema()
    assert set(document["webhooks"]) == EVENT_TYPES
    for event_type, item in document["webhooks"].items():
        operation = item["post"]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header" and p["required"]}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}, event_type
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["type"]["const"] == event_type
        data = json.dumps(body["properties"]["data"])
        schema = "BatchView" if event_type.startswith("batch.") else "TransactionStatus"
        assert f"#/components/schemas/{schema}" in data and schema in document["components"]["schemas"]
