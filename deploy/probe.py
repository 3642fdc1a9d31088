"""Readiness probes for the local stack: exit 0 when the service really answers.

probe.py kafka HOST:PORT   the broker returns cluster metadata with at least one broker
probe.py redis HOST:PORT   Redis answers PING
"""

import sys


def kafka(bootstrap: str) -> bool:
    """True when the broker at `bootstrap` serves metadata."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000})
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    return bool(metadata.brokers) and metadata.controller_id is not None and metadata.controller_id >= 0


def redis(address: str) -> bool:
    """True when Redis at `address` answers PING."""
    import redis as redis_client

    host, _, port = address.rpartition(":")
    try:
        return bool(redis_client.Redis(host=host, port=int(port), socket_timeout=1).ping())
    except Exception:
        return False


if __name__ == "__main__":
    probes = {"kafka": kafka, "redis": redis}
    if len(sys.argv) != 3 or sys.argv[1] not in probes:
        sys.exit(f"usage: {sys.argv[0]} kafka|redis HOST:PORT")
    sys.exit(0 if probes[sys.argv[1]](sys.argv[2]) else 1)
