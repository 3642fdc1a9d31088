"""The tallies of gateway/telemetry/metrics.py add many observations to prometheus_client's shared samples at
once through its private `_upper_bounds`, `_buckets` and `_sum` (pyproject pins the range they were read
from): published, they must give exactly the samples `observe()` and `inc()` one by one give. A change of
those internals fails here, not in production."""

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, values

from gateway.telemetry.metrics import Tally, TallyHistogram

BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5)


def samples(registry: CollectorRegistry) -> dict[tuple, float]:
    # in-process values: in multi-process mode both registries would share one file and agree trivially
    assert values.ValueClass is values.MutexValue
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): round(sample.value, 9)
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_a_published_histogram_tally_equals_observing_one_by_one():
    values = [random.uniform(0, 3) for _ in range(1000)] + list(BUCKETS)  # bounds themselves included
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    one_by_one = Histogram("delay_seconds", "d", ["route"], buckets=BUCKETS, registry=direct).labels("a")
    tally = TallyHistogram(Histogram("delay_seconds", "d", ["route"], buckets=BUCKETS, registry=tallied).labels("a"))
    for value in values:
        one_by_one.observe(value)
        tally.observe(value)
    tally.publish()
    assert samples(tallied) == samples(direct)
    tally.publish()  # nothing new: nothing added
    assert samples(tallied) == samples(direct)


def test_a_published_counter_tally_equals_incrementing_one_by_one():
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    one_by_one = Counter("answers", "a", ["status"], registry=direct).labels("202")
    tally = Tally(Counter("answers", "a", ["status"], registry=tallied).labels("202"))
    for _ in range(7):
        one_by_one.inc()
        tally.inc()
    tally.publish()
    assert samples(tallied) == samples(direct)
