"""`python -m gateway check`: validate the configuration and say what is wrong before serving."""

import sys

from gateway.errors import ConfigurationError


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit status."""
    if argv != ["check"]:
        print("usage: python -m gateway check", file=sys.stderr)
        return 2
    from gateway.api.app import build_policy
    from gateway.settings import Settings

    try:
        build_policy(Settings.from_env())
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
