"""Kafka: the producer, topics, and the event contract (TransactionAccepted v1, batch events)."""
