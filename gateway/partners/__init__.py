"""Partners: the registry, authentication, rate limits."""
