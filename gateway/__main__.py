"""`python -m gateway check`: validate the configuration (settings, rules, partner registry) and say
what is wrong before serving. `python -m gateway new-key`: a fresh partner API key and the SHA-256 line
the registry stores (the key itself is shown once and stored nowhere)."""

import sys

from gateway.errors import ConfigurationError


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit status."""
    if argv == ["new-key"]:
        from gateway.partners.registry import new_key

        key, digest = new_key()
        print(f"key (give it to the partner, store it nowhere): {key}")
        print(f'registry entry: {{ id = "<key id>", sha256 = "{digest}" }}')
        return 0
    if argv != ["check"]:
        print("usage: python -m gateway check | new-key", file=sys.stderr)
        return 2
    from gateway.api.app import build_policy, load_partners
    from gateway.settings import Settings

    try:
        settings = Settings.from_env()
        build_policy(settings)
        registry = load_partners(settings)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    for warning in registry.warnings if registry is not None else ():
        print(f"warning: {warning}", file=sys.stderr)  # a locked-out partner is allowed, not unnoticed
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
