"""`python -m gateway serve`: the gateway under Granian, with the options every way of starting it
shares (make run, the image, the tests, the benchmarks). `python -m gateway check`: validate the
configuration (settings, rules, partner registry) and say what is wrong before serving. `python -m
gateway new-key`: a fresh partner API key and the SHA-256 line the registry stores (the key itself is
shown once and stored nowhere). `python -m gateway new-webhook-secret`: a fresh Standard Webhooks
signing secret for a partner's `[partners.<id>.webhook]` table."""

import argparse
import os
import sys
from typing import NoReturn

from settlement.errors import ConfigurationError

APP = "gateway.api.app:create_app"


def granian_arguments(
    host: str, port: int, workers: int, kill_timeout: int, certificate: str = "", key: str = ""
) -> list[str]:
    """Granian's options for the gateway, in one place."""
    arguments = ["--interface", "asgi", "--factory", APP, "--host", host, "--port", str(port)]
    arguments += ["--workers", str(workers), "--no-ws", "--workers-kill-timeout", str(kill_timeout)]
    # A worker that dies is replaced at once while the others keep serving. The interval only paces
    # graceful respawns (SIGHUP): a new worker starts that long before its predecessor stops; 5 s covers a
    # worker's start-up (2-6 s on a loaded 2-core machine), 1 s left no worker listening for 1-3 s of a
    # reload there. It does not delay the replacement of a dead worker.
    arguments += ["--respawn-failed-workers", "--respawn-interval", "5"]
    if certificate and key:  # HTTPS on the partners' port (`check` refuses one file without the other)
        arguments += ["--ssl-certificate", certificate, "--ssl-keyfile", key]
    return arguments


def serve(argv: list[str]) -> NoReturn:
    """Replace this process with Granian serving the gateway (so signals reach Granian itself); options
    this does not know go to Granian as given, after its own. `granian` is looked up on PATH."""
    # no abbreviations: an option that does not name one of these exactly goes to Granian as given
    parser = argparse.ArgumentParser(prog="python -m gateway serve", description=serve.__doc__, allow_abbrev=False)
    environ = os.environ.get
    parser.add_argument("--host", default=environ("GATEWAY_HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(environ("GATEWAY_PORT") or 8000))
    parser.add_argument("--workers", type=int, default=int(environ("GATEWAY_WORKERS") or len(os.sched_getaffinity(0))))
    parser.add_argument("--kill-timeout", type=int, default=int(environ("GATEWAY_SHUTDOWN_GRACE_SECONDS") or 15))
    known, granian_own = parser.parse_known_args(argv)
    tls = (environ("GATEWAY_TLS_CERT_FILE") or "", environ("GATEWAY_TLS_KEY_FILE") or "")
    arguments = granian_arguments(known.host, known.port, known.workers, known.kill_timeout, *tls)
    os.execvp("granian", ["granian", *arguments, *granian_own])


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit status."""
    if argv == ["new-key"]:
        from gateway.partners.registry import new_key

        key, digest = new_key()
        print(f"key (give it to the partner, store it nowhere): {key}")
        print(f'registry entry: {{ id = "<key id>", sha256 = "{digest}" }}')
        return 0
    if argv == ["new-webhook-secret"]:
        from settlement.webhooks import new_secret

        print(f"webhook secret (give it to the partner; keep it in the registry or secret_env): {new_secret()}")
        return 0
    if argv[:1] == ["serve"]:
        serve(argv[1:])
    if argv != ["check"]:
        commands = "serve [--host H] [--port P] [--workers N] [granian options] | check | new-key | new-webhook-secret"
        print(f"usage: python -m gateway {commands}", file=sys.stderr)
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
