"""The stack's PostgreSQL (deploy/postgres.sh), reached through the URL the stack exports
(GATEWAY_DATABASE_URL): a real login, transactions that commit or leave nothing, the settings a ledger
needs, and a server that does not run as root (PostgreSQL refuses to)."""

from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict


def test_a_transaction_commits_and_a_failed_one_leaves_nothing(database):
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("CREATE TEMP TABLE ledger (transaction_id text PRIMARY KEY, amount numeric(20, 4) NOT NULL)")
        with connection.transaction():
            connection.execute("INSERT INTO ledger VALUES (%s, %s)", ("txn_1", Decimal("250.00")))
            connection.execute("INSERT INTO ledger VALUES (%s, %s)", ("txn_2", Decimal("0.0001")))
        with pytest.raises(psycopg.errors.UniqueViolation), connection.transaction():
            connection.execute("INSERT INTO ledger VALUES (%s, %s)", ("txn_3", Decimal("9")))
            connection.execute("INSERT INTO ledger VALUES (%s, %s)", ("txn_1", Decimal("1")))

        rows = connection.execute("SELECT transaction_id, amount FROM ledger ORDER BY transaction_id").fetchall()
        assert rows == [("txn_1", Decimal("250.0000")), ("txn_2", Decimal("0.0001"))]
        assert connection.execute("SELECT sum(amount) FROM ledger").fetchone() == (Decimal("250.0001"),)


def test_the_server_keeps_a_ledger_safely(database):
    with psycopg.connect(database) as connection:
        setting = {
            name: connection.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
            for name in ("fsync", "synchronous_commit", "full_page_writes", "server_encoding")
        }
    assert setting == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "server_encoding": "UTF8"}


def _uids(pid: int) -> list[int]:
    """The real, effective, saved and file-system uids of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise LookupError(f"no Uid line for process {pid}")


def test_the_server_runs_as_an_unprivileged_user_that_owns_its_data(database):
    if conninfo_to_dict(database).get("host") not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("the server is on another machine: its processes cannot be inspected from here")
    with psycopg.connect(database) as connection:
        backend = connection.info.backend_pid
        # a backend works in the server's data directory: this proves the process is our connection's
        data_directory = Path(f"/proc/{backend}/cwd").resolve()
        assert (data_directory / "PG_VERSION").is_file(), data_directory
        postmaster = int(Path(f"/proc/{backend}/status").read_text().split("PPid:")[1].split()[0])
        assert Path(f"/proc/{postmaster}/cwd").resolve() == data_directory

        for pid in (backend, postmaster):
            assert 0 not in _uids(pid), f"process {pid} runs as root"
        owner = data_directory.stat()
        assert owner.st_uid == _uids(postmaster)[1]
        assert owner.st_mode & 0o077 in (0, 0o050), f"{data_directory} is open to others: {oct(owner.st_mode)}"
