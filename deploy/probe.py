"""Readiness probes for the local stack: exit 0 when the service really answers.

probe.py kafka HOST:PORT [BROKERS]  the broker returns cluster metadata with a controller and at least
                           BROKERS (default 1) live brokers in it (a KRaft broker lists only unfenced ones)
probe.py redis HOST:PORT   Redis answers PING
probe.py postgres URL      PostgreSQL logs in and answers SELECT 1 (postgresql://user:password@host:port/db)
probe.py postgres HOST:PORT  the same as the local stack's role `settlement` on its database `settlement`,
                           with the password from libpq's PGPASSWORD or password file
"""

import sys


def kafka(bootstrap: str, brokers: str = "1") -> bool:
    """True when the broker at `bootstrap` serves metadata with at least `brokers` live brokers."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000})
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    enough = len(metadata.brokers) >= max(1, int(brokers))
    return enough and metadata.controller_id is not None and metadata.controller_id >= 0


def redis(address: str) -> bool:
    """True when Redis at `address` answers PING."""
    import redis as redis_client

    host, _, port = address.rpartition(":")
    try:
        return bool(redis_client.Redis(host=host, port=int(port), socket_timeout=1).ping())
    except Exception:
        return False


def postgres(target: str) -> bool:
    """True when PostgreSQL at `target` (a URL, or HOST:PORT of the local stack's database) logs in
    and answers SELECT 1."""
    import psycopg

    if "://" not in target:
        host, _, port = target.rpartition(":")
        target = f"postgresql://settlement@{host}:{port}/settlement"
    try:
        with psycopg.connect(target, connect_timeout=2) as connection:
            return connection.execute("SELECT 1").fetchone() == (1,)
    except Exception:
        return False


if __name__ == "__main__":
    probes = {"kafka": kafka, "redis": redis, "postgres": postgres}
    extra = 1 if sys.argv[1:2] == ["kafka"] else 0  # kafka's optional BROKERS
    if not 3 <= len(sys.argv) <= 3 + extra or sys.argv[1] not in probes:
        sys.exit(f"usage: {sys.argv[0]} kafka HOST:PORT [BROKERS], redis HOST:PORT, or postgres URL|HOST:PORT")
    sys.exit(0 if probes[sys.argv[1]](*sys.argv[2:]) else 1)
