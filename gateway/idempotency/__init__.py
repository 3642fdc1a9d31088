"""Idempotency in Redis: the store's protocol and its two forms (one node, cluster), and their Lua."""
