"""The settlement processor: state as a fold of the Kafka log, in PostgreSQL (DESIGN section 8)."""
