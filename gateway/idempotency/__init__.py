"""Idempotency in Redis: the store, its Lua scripts, the pipelined client."""
