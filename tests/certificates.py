"""Self-signed certificates made at test time, with the openssl command (the `cryptography` package is not
among the test dependencies)."""

import subprocess
from pathlib import Path


def self_signed(directory: Path, name: str = "gateway") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid a day, and its unencrypted key (PKCS#8 PEM):
    (certificate, key) under `directory`."""
    certificate, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(certificate), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return certificate, key


def encrypted_copy(key: Path, passphrase: str = "secret") -> Path:
    """`key` encrypted with a passphrase, beside it."""
    encrypted = key.with_name(key.stem + "-encrypted.key")
    subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-in", str(key), "-out", str(encrypted), "-passout", f"pass:{passphrase}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return encrypted
