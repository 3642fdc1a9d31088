"""The one place the store's form is chosen: GATEWAY_REDIS_URL with several seed addresses names a Redis
Cluster (`ClusterStore` on a `RedisCluster`), otherwise one node (`SingleNodeStore` on a
`RedisPipeline`)."""

from gateway.idempotency.cluster import ClusterStore
from gateway.idempotency.single_node import SingleNodeStore
from gateway.idempotency.store import IdempotencyStore
from gateway.redis.cluster import RedisCluster, is_cluster_url
from gateway.redis.pipeline import RedisPipeline
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics


def open_store(settings: Settings, metrics: Metrics) -> IdempotencyStore:
    """The worker's idempotency store and its Redis client (connected by the first command)."""
    timeout = settings.redis_timeout_ms / 1000
    ttls = {
        "pending_ttl_ms": settings.pending_ttl_seconds * 1000,
        "done_ttl_ms": settings.idempotency_ttl_seconds * 1000,
        "guard_ttl_ms": settings.transaction_id_ttl_seconds * 1000,
        "stale_after_ms": settings.in_doubt_after_ms,
    }
    if is_cluster_url(settings.redis_url):
        return ClusterStore(RedisCluster(settings.redis_url, timeout), metrics, **ttls)
    return SingleNodeStore(RedisPipeline(settings.redis_url, timeout), metrics, **ttls)
