"""Micro-benchmark: fastcore validate + route per transaction, compiled extension vs its pure-Python twin.

    .venv/bin/python benchmarks/micro_fastcore.py [--number N]

Prints microseconds per transaction (best of 5 repeats) and the ratio, for a valid transaction and
for one that fails four rules.
"""

import argparse
import timeit

import fastcore

VALID = (
    "txn_000001",
    b"250.00",
    "USD",
    "GBP",
    "acct_usa_88",
    "acct_uk_99",
    "cparty_london",
    "idemp_key_101",
    None,
    "t1",
    None,
)
INVALID = ("txn 1", b"-250.001", "usd", "XAU", "acct_usa_88", "acct_usa_88", "cparty_london", "k", None, "t1", None)
NOW = 1_790_000_000.0


def per_transaction_us(impl, fields, number: int) -> float:
    """Best-of-5 microseconds for one validate (+ route when valid) call."""
    policy = impl.Policy("1000000000", [("USD", "RUB")])
    rules = impl.Rules()
    validate, route, failed = impl.validate, impl.route, fastcore.ValidationFailed

    def once() -> None:
        try:
            instruction = validate(policy, *fields)
        except failed:
            return
        route(rules, instruction.requested_window, fields[2], fields[3], instruction.amount_minor, NOW)

    return min(timeit.repeat(once, number=number, repeat=5)) / number * 1e6


def main() -> None:
    """Run both cases through both implementations and print a small table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    if not fastcore.COMPILED:
        raise SystemExit("the compiled extension is not loaded: run `make install` first")
    twin = fastcore.load_twin()
    print(f"{'case':<10} {'compiled µs':>12} {'twin µs':>10} {'speed-up':>9}")
    for name, fields in (("valid", VALID), ("invalid", INVALID)):
        compiled_us = per_transaction_us(fastcore, fields, args.number)
        twin_us = per_transaction_us(twin, fields, args.number // 10)
        print(f"{name:<10} {compiled_us:>12.3f} {twin_us:>10.3f} {twin_us / compiled_us:>8.1f}x")


if __name__ == "__main__":
    main()
