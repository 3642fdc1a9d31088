"""Partners: the registry, authentication, signatures, admission (rate limits, nonces)."""
