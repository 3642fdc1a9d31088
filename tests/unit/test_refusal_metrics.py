"""Refusals are counted with bounded labels: a partner's made-up field names never become series."""

from gateway.api.edge import field_label


def test_metric_labels_of_fields_stay_bounded():
    assert field_label("amount") == "amount"
    assert field_label("") == ""
    assert field_label("metadata.invoice") == "metadata"
    assert field_label("amt") == "other"
    assert field_label("x" * 200) == "other"
    assert field_label("nope.invoice") == "other"
