"""Micro-benchmark: fastcore validate + route per transaction, compiled extension vs its pure-Python twin.

    .venv/bin/python benchmarks/micro_fastcore.py [--number N]

Prints microseconds per transaction (the best and the median of 15 repeats: this kind of shared
virtual machine is noisy, and the best is the least disturbed) and the ratio, for a valid
transaction and for one that fails four rules.
"""

import argparse
import timeit
from datetime import date

import fastcore
from gateway.routing import load_rules

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


def per_transaction_us(impl, fields, number: int) -> tuple[float, float]:
    """Best and median microseconds for one validate (+ route when valid) call, as the gateway calls them."""
    policy = impl.Policy("1000000000", [("USD", "RUB")])
    rules = load_rules(None, date(2026, 1, 1), impl)
    validate, route, failed = impl.validate, impl.route, fastcore.ValidationFailed

    def once() -> None:
        try:
            instruction = validate(policy, *fields)
        except failed:
            return
        route(rules, instruction.requested_window, fields[2], fields[3], instruction.amount_minor, NOW)

    runs = sorted(t / number * 1e6 for t in timeit.repeat(once, number=number, repeat=15))
    return runs[0], runs[len(runs) // 2]


def main() -> None:
    """Run both cases through both implementations and print a small table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    if not fastcore.COMPILED:
        raise SystemExit("the compiled extension is not loaded: run `make install` first")
    twin = fastcore.load_twin()
    print(f"{'case':<8} {'compiled µs best/median':>24} {'twin µs best/median':>20} {'speed-up':>9}")
    for name, fields in (("valid", VALID), ("invalid", INVALID)):
        compiled = per_transaction_us(fastcore, fields, args.number)
        twin_us = per_transaction_us(twin, fields, args.number // 10)
        print(
            f"{name:<8} {compiled[0]:>12.3f} / {compiled[1]:<9.3f} {twin_us[0]:>8.3f} / {twin_us[1]:<9.3f}"
            f" {twin_us[0] / compiled[0]:>8.1f}x"
        )


if __name__ == "__main__":
    main()
