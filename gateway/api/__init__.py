"""The HTTP edge: app factory, the edge pipeline, routes (transactions, status, operations), problems, OpenAPI."""
