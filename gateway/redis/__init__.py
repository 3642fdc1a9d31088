"""The Redis transport: the pipelined connection, Redis Cluster routing, and the one place its failures
become the gateway's error (gateway.redis.errors)."""
