"""The partner registry file: what it accepts, and a message naming the line for what it refuses."""

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.partners.authentication import Authenticator
from gateway.partners.registry import Registry, key_digest, new_key
from gateway.partners.reload import RegistryWatcher
from gateway.telemetry.metrics import Metrics
from settlement.errors import ConfigurationError
from settlement.stamps import file_stamp

KEY, DIGEST = new_key()


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Registry:
    path = tmp_path / "partners.toml"
    path.write_text(text)
    return Registry.load(path, environ or {})


def test_keys_are_random_and_stored_only_as_their_digest():
    key, digest = new_key()
    assert key.startswith("sk_") and len(key) > 40 and key != KEY
    assert digest == key_digest(key) and key not in digest and len(digest) == 64


def test_a_good_registry(tmp_path):
    registry = _load(
        tmp_path,
        f"""
[partners.acme]
rate = 500
burst = 1000
windows = ["t0", "t1"]
currencies = ["USD", "GBP"]
signing_secret_env = "ACME_SECRET"
keys = [{{ id = "k1", sha256 = "{DIGEST}" }}, {{ id = "k0", sha256 = "{"0" * 64}", revoked = true }}]
""",
        {"ACME_SECRET": "s" * 32},
    )
    partner = registry.partners["acme"]
    assert (partner.rate, partner.burst, partner.signing_secret) == (500.0, 1000, b"s" * 32)
    assert partner.forbids(("t1",), ("USD", "GBP")) is None
    assert partner.forbids(("rtgs",), ("USD", "GBP")) == "settlement window rtgs is not enabled for partner acme"
    assert partner.forbids(("t1",), ("USD", "EUR")) == "currency EUR is not enabled for partner acme"
    assert registry.authenticate(KEY, time.time()).partner == partner
    assert registry.authenticate(KEY + "x", time.time()).problem == "the API key is not valid"


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ('[partners.acme]\nkeys = [{ id = "k1", sha256 = "nope" }]\n', 2, "sha256 must be the 64"),
        ('\n\n[partners.acme]\nrate = -1\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 4, "rate of acme"),
        ('[partners.acme]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\ncolour = "blue"\n', 3, "unknown setting"),
        ('[partners.acme]\nkeys = { id = "k1", sha256 = "DIGEST" }\n', 2, "keys of acme must be a list"),
        ('[partners.acme]\nkeys = [{ id = "k1", sha256 = "DIGEST", revoked = "yes" }]\n', 2, "revoked must be"),
        ('[partners.Acme]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 1, "partner id 'Acme'"),
        ('[partners.acme]\nwindows = ["t2"]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 2, "windows of acme"),
        (
            '[partners.acme]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n[partners.beta]\nkeys = [\n'
            '  { id = "k1", sha256 = "DIGEST" },\n]\n',
            5,
            "listed twice",
        ),
        ('[partners.acme]\nsigning_secret_env = "NONE"\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 2, "not set"),
        ('[partners.acme]\nsigning_secret = "short"\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 2, "32 bytes"),
        ("[partners.acme]\nrate = \n", 2, "expected"),  # TOML itself: rtoml names line and column
    ],
)
def test_a_bad_registry_stops_with_the_line(tmp_path, text, line, says):
    with pytest.raises(ConfigurationError) as caught:
        _load(tmp_path, text.replace("DIGEST", DIGEST))
    message = str(caught.value)
    assert says in message, message
    assert f"line {line}" in message, message
    assert "partners.toml" in message


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'[partners.acme]\nkeys = [{ id = "k\xff1", sha256 = "DIGEST" }]\n', "line 2: not UTF-8"),
        (b"a = " + b"[" * 600 + b"]" * 600, "max recursion depth"),
        (b"a = " + b"{ b = " * 600 + b"1" + b" }" * 600, "max recursion depth"),
    ],
)
def test_a_file_that_is_not_utf8_or_nests_too_deep_is_refused_naming_the_file(tmp_path, data, says):
    path = tmp_path / "partners.toml"
    path.write_bytes(data.replace(b"DIGEST", DIGEST.encode()))
    with pytest.raises(ConfigurationError, match=f"partner registry {path}.*{says}"):
        Registry.load(path, {})


def test_no_partners_at_all_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="no partners"):
        _load(tmp_path, "# nothing\n")


def test_a_partner_whose_only_key_is_revoked_is_loaded_locked_out_with_a_warning(tmp_path):
    zeta_key, zeta_digest = new_key()
    registry = _load(
        tmp_path,
        f"""
[partners.acme]
keys = [{{ id = "k1", sha256 = "{DIGEST}" }}]

[partners.zeta]
keys = [{{ id = "k1", sha256 = "{zeta_digest}", revoked = true }}]
""",
    )
    assert set(registry.partners) == {"acme", "zeta"}
    assert registry.warnings == ("partner zeta has no active key: it is locked out",)
    refused = registry.authenticate(zeta_key, time.time())
    assert refused.partner is None and refused.problem == "the API key was revoked"
    assert registry.authenticate(KEY, time.time()).partner == registry.partners["acme"]


def test_no_keys_empty_keys_or_only_expired_keys_lock_a_partner_out(tmp_path):
    expired_key, expired_digest = new_key()
    registry = _load(
        tmp_path,
        f"""
[partners.acme]
keys = [{{ id = "k1", sha256 = "{DIGEST}" }}]
[partners.empty]
keys = []
[partners.keyless]
rate = 5
[partners.lapsed]
keys = [{{ id = "k1", sha256 = "{expired_digest}", expires = 2026-01-01T00:00:00Z }}]
""",
    )
    assert registry.warnings == tuple(
        f"partner {p} has no active key: it is locked out" for p in ("empty", "keyless", "lapsed")
    )
    assert registry.authenticate(expired_key, time.time()).problem == "the API key has expired"
    # the same file read before the key expired: nothing to warn of for lapsed
    before = Registry.load(tmp_path / "partners.toml", {}, now=datetime(2025, 6, 1, tzinfo=UTC).timestamp())
    assert [w.split()[1] for w in before.warnings] == ["empty", "keyless"]


# -- the watcher: RegistryWatcher on real files ---------------------------------------------------------


def _registry_text(partners: dict[str, list[tuple[str, str, bool]]]) -> str:
    """A registry of `partners`: id -> [(key id, digest, revoked)]."""
    tables = []
    for partner, keys in partners.items():
        entries = ", ".join(
            f'{{ id = "{key_id}", sha256 = "{digest}"{", revoked = true" if revoked else ""} }}'
            for key_id, digest, revoked in keys
        )
        tables.append(f"[partners.{partner}]\nkeys = [{entries}]\n")
    return "\n".join(tables)


def _watched(path: Path, interval: float = 0, settle: float = 0) -> tuple[Authenticator, RegistryWatcher, Metrics]:
    metrics = Metrics()
    authenticator = Authenticator(Registry.load(path), "default", time.time)
    watcher = RegistryWatcher(path, authenticator, interval, metrics, settle=settle)
    return authenticator, watcher, metrics


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def _partner_of(authenticator: Authenticator, key: str) -> str | None:
    assert authenticator.registry is not None
    partner = authenticator.registry.authenticate(key, time.time()).partner
    return partner.id if partner else None


def test_a_changed_file_is_served_and_a_bad_one_keeps_the_previous_and_says_so_until_a_good_one(tmp_path, caplog):
    path = tmp_path / "partners.toml"
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)]}))
    authenticator, watcher, metrics = _watched(path)
    watcher.start()
    assert not watcher.check()  # unchanged
    assert _sample(metrics, "settlement_partner_registry_reloads_total", outcome="failed") == 0
    assert _sample(metrics, "settlement_partner_registry_reload_failed") == 0
    first_loaded = _sample(metrics, "settlement_partner_registry_loaded_timestamp_seconds")
    assert first_loaded == pytest.approx(time.time(), abs=5)

    other_key, other_digest = new_key()
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)], "beta": [("k1", other_digest, False)]}))
    assert watcher.check()
    assert _partner_of(authenticator, other_key) == "beta"
    assert _sample(metrics, "settlement_partner_registry_reloads_total", outcome="loaded") == 1

    path.write_text("[partners.beta\n")  # broken: the previous registry stays, and says so
    with caplog.at_level(logging.ERROR, logger="gateway.partners"):
        assert not watcher.check()
        assert not watcher.check()  # the same bad file is reported once
    assert _partner_of(authenticator, other_key) == "beta"
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "line 1" in error and "partners.toml" in error
    assert _sample(metrics, "settlement_partner_registry_reloads_total", outcome="failed") == 1
    assert _sample(metrics, "settlement_partner_registry_reload_failed") == 1
    warning = watcher.warning
    assert warning is not None and warning.startswith("partner registry reload failed at 20")
    assert "line 1" in warning and "; serving the registry loaded at 20" in warning

    path.write_text(_registry_text({"beta": [("k1", other_digest, False)]}))
    assert watcher.check()
    assert watcher.warning is None
    assert _sample(metrics, "settlement_partner_registry_reload_failed") == 0
    assert _sample(metrics, "settlement_partner_registry_reloads_total", outcome="loaded") == 2


def test_revoking_a_partners_only_key_is_served_at_the_next_check(tmp_path, caplog):
    path = tmp_path / "partners.toml"
    zeta_key, zeta_digest = new_key()
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)], "zeta": [("k1", zeta_digest, False)]}))
    authenticator, watcher, metrics = _watched(path)
    watcher.start()
    assert _partner_of(authenticator, zeta_key) == "zeta"
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)], "zeta": [("k1", zeta_digest, True)]}))
    with caplog.at_level(logging.INFO, logger="gateway.partners"):
        assert watcher.check()
    assert _partner_of(authenticator, zeta_key) is None
    assert _partner_of(authenticator, KEY) == "acme"
    messages = [r.getMessage() for r in caplog.records]
    assert "partner registry reload revokes keys zeta/k1" in messages
    assert "partner registry: partner zeta has no active key: it is locked out" in messages
    assert watcher.warning is None
    assert _sample(metrics, "settlement_partner_registry_removed_total", kind="key") == 0  # revoked, not removed


def test_removed_partners_and_keys_are_logged_by_id_and_counted_never_by_digest(tmp_path, caplog):
    path = tmp_path / "partners.toml"
    old_key, old_digest = new_key()
    globex_key, globex_digest = new_key()
    path.write_text(
        _registry_text(
            {"acme": [("k1", DIGEST, False), ("k0", old_digest, False)], "globex": [("k1", globex_digest, False)]}
        )
    )
    authenticator, watcher, metrics = _watched(path)
    watcher.start()
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)]}))
    with caplog.at_level(logging.WARNING, logger="gateway.partners"):
        assert watcher.check()
    [line] = [r.getMessage() for r in caplog.records if "removes" in r.getMessage()]
    assert line.startswith("partner registry reload removes partners globex and keys acme/k0, globex/k1:"), line
    assert old_digest not in caplog.text and globex_digest not in caplog.text and DIGEST not in caplog.text
    assert _sample(metrics, "settlement_partner_registry_removed_total", kind="partner") == 1
    assert _sample(metrics, "settlement_partner_registry_removed_total", kind="key") == 2
    assert _partner_of(authenticator, old_key) is None and _partner_of(authenticator, globex_key) is None
    # the same id with another digest: the old key is gone, whatever its id says
    new_digest = new_key()[1]
    path.write_text(_registry_text({"acme": [("k1", new_digest, False)]}))
    assert watcher.check()
    assert _partner_of(authenticator, KEY) is None
    assert _sample(metrics, "settlement_partner_registry_removed_total", kind="key") == 3


def test_a_file_renamed_over_the_served_one_is_seen_even_with_the_same_size_and_times(tmp_path):
    path = tmp_path / "partners.toml"
    other_key, other_digest = new_key()
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)]}))
    authenticator, watcher, _ = _watched(path)
    before = file_stamp(path)
    assert before is not None
    new = tmp_path / "partners.toml.new"
    new.write_text(_registry_text({"acme": [("k1", other_digest, False)]}))  # the same length
    os.utime(new, ns=(before.mtime_ns, before.mtime_ns))
    os.replace(new, path)
    after = file_stamp(path)
    assert after is not None and (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
    assert after.inode != before.inode
    assert watcher.check()
    assert _partner_of(authenticator, other_key) == "acme" and _partner_of(authenticator, KEY) is None


def test_a_file_that_moved_since_the_watcher_looked_is_not_read(tmp_path):
    path = tmp_path / "partners.toml"
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)]}))
    authenticator, watcher, _ = _watched(path)
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)], "beta": [("k1", new_key()[1], False)]}))
    looked = file_stamp(path)
    path.write_text(_registry_text({"beta": [("k1", new_key()[1], False)]}))  # written again since
    assert not watcher.check(looked)
    assert authenticator.registry is not None and set(authenticator.registry.partners) == {"acme"}
    assert watcher.check()  # the next look reads what is there now


def test_the_settle_time_counts_from_the_last_write_and_is_bounded(tmp_path):
    path = tmp_path / "partners.toml"
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)]}))
    _, watcher, _ = _watched(path, interval=2, settle=0.5)
    stamp = file_stamp(path)
    assert stamp is not None
    written = stamp.mtime_ns / 1e9
    assert watcher.settling(stamp, written) == 0.5
    assert watcher.settling(stamp, written + 0.2) == pytest.approx(0.3)
    assert watcher.settling(stamp, written + 10) == 0
    assert watcher.settling(stamp, written - 3600) == 0.5  # a file from the future waits the settle time only
    # never longer than the interval: a change is served within one interval of its last write
    assert RegistryWatcher(path, Authenticator(None, "default", time.time), 0.2, Metrics(), settle=0.5).settling(
        stamp, written
    ) == pytest.approx(0.2)


async def test_a_file_written_in_place_in_two_steps_is_served_whole_within_the_interval(tmp_path, caplog):
    """The half written first lacks a partner and stays on disk for half an interval, over a look of the
    watcher: it is never served (without the settle time it was, every round), and the whole file is,
    within one interval of its last write."""
    interval = 0.5
    path = tmp_path / "partners.toml"
    beta_key, beta_digest = new_key()
    whole = _registry_text({"acme": [("k1", DIGEST, False)], "beta": [("k1", beta_digest, False)]})
    path.write_text(whole)
    authenticator, watcher, metrics = _watched(path, interval=interval, settle=interval)
    watcher.start()
    delays = []
    try:
        for round_ in range(4):
            await asyncio.sleep(0.7 * interval)  # the half is on disk when the next look comes
            text = whole.replace(DIGEST, new_key()[1]) if round_ % 2 == 0 else whole
            half = text[: text.index("[partners.beta]")]
            with path.open("w") as file:  # in place: truncate, write the half, then the rest
                file.write(half)
                file.flush()
                await asyncio.sleep(interval / 2)
                file.write(text[len(half) :])
            written = time.monotonic()
            while authenticator.registry is None or authenticator.registry.source != file_stamp(path):
                await asyncio.sleep(0.01)
            delays.append(time.monotonic() - written)
            assert _partner_of(authenticator, beta_key) == "beta"
    finally:
        await watcher.close()
    assert "removes partners" not in caplog.text
    assert _sample(metrics, "settlement_partner_registry_removed_total", kind="partner") == 0
    assert _sample(metrics, "settlement_partner_registry_reloads_total", outcome="loaded") == 4
    assert max(delays) < interval + 0.2, delays


async def test_a_slow_load_never_holds_up_the_workers_loop(tmp_path, monkeypatch):
    """A reload resolves every webhook host: a slow DNS answer (a load taking 0.6 s here) is waited for
    off the event loop, which keeps serving meanwhile, and the new registry is served once loaded."""
    import gateway.partners.reload as reload

    real_load = Registry.load

    def slow_load(path, *args, **kwargs):
        time.sleep(0.6)
        return real_load(path, *args, **kwargs)

    path = tmp_path / "partners.toml"
    path.write_text(_registry_text({"acme": [("k1", DIGEST, False)]}))
    authenticator, watcher, _ = _watched(path, interval=0.05)
    monkeypatch.setattr(reload.Registry, "load", slow_load)
    beta_key, beta_digest = new_key()
    watcher.start()
    late: list[float] = []
    try:
        path.write_text(_registry_text({"acme": [("k1", DIGEST, False)], "beta": [("k1", beta_digest, False)]}))
        deadline = time.monotonic() + 5
        while _partner_of(authenticator, beta_key) is None and time.monotonic() < deadline:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            late.append(time.monotonic() - before - 0.01)
    finally:
        await watcher.close()
    assert _partner_of(authenticator, beta_key) == "beta"
    assert max(late) < 0.3, max(late)  # on the loop, the 0.6 s load would show here


def test_gateway_check_passes_a_locked_out_partner_but_says_so(tmp_path, monkeypatch, capsys):
    from gateway.__main__ import main

    path = tmp_path / "partners.toml"
    path.write_text(f'[partners.zeta]\nkeys = [{{ id = "k1", sha256 = "{DIGEST}", revoked = true }}]\n')
    monkeypatch.setenv("GATEWAY_PARTNERS_FILE", str(path))
    assert main(["check"]) == 0
    assert "warning: partner zeta has no active key: it is locked out" in capsys.readouterr().err
