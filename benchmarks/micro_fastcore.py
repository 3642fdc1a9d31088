"""Micro-benchmark: validate + route per transaction, fastcore compiled vs its pure-Python twin vs Pydantic v2.

    .venv/bin/python benchmarks/micro_fastcore.py [--number N] [--json]

Microseconds per transaction, the best and the median of 15 repeats (this kind of shared virtual
machine is noisy, and the best is the least disturbed):

- fastcore: `validate` + `route` on the decoded fields, as the gateway calls them;
- twin: the same source, interpreted;
- pydantic: `TransactionModel.model_validate` on the same fields as a dict (the model of the peer,
  benchmarks/peers/pydantic_model.py: the same rules, and no routing at all);
- from raw JSON bytes: msgspec decode + fastcore, against `model_validate_json`.

Cases: a valid transaction, and one that breaks four rules (fastcore lists them all).
"""

import argparse
import contextlib
import json
import timeit
from collections.abc import Callable
from datetime import date

import fastcore
from benchmarks.peers.pydantic_model import TransactionModel
from gateway.api.transactions import SEED_EXAMPLE
from gateway.intake.canonical import validation_fields
from gateway.intake.schemas import REQUEST_DECODER
from settlement.rules import load_policy, load_rules

VALID = {**SEED_EXAMPLE, "amount": "250.00"}  # the seed's transaction, amount as a decimal string
INVALID = {
    **VALID,
    "transaction_id": "txn 1",
    "amount": "-250.001",
    "source_currency": "usd",
    "destination_currency": "XAU",
    "destination_account": "acct_usa_88",
    "idempotency_key": "k",
}
NOW = 1_790_000_000.0


def timed(call: Callable[[], object], number: int) -> tuple[float, float]:
    """Best and median microseconds per call over 15 repeats."""
    runs = sorted(t / number * 1e6 for t in timeit.repeat(call, number=number, repeat=15))
    return runs[0], runs[len(runs) // 2]


def fastcore_call(impl, fields: tuple) -> Callable[[], None]:
    """One validate (+ route when valid), as the gateway makes them."""
    policy = load_policy(None, [("USD", "RUB")], impl)
    rules = load_rules(None, date(2026, 1, 1), impl)
    validate, route, failed = impl.validate, impl.route, fastcore.ValidationFailed

    def once() -> None:
        try:
            instruction = validate(policy, *fields)
        except failed:
            return
        route(rules, instruction.requested_window, fields[2], fields[3], instruction.amount_minor, NOW)

    return once


def from_json_call(body: bytes) -> Callable[[], None]:
    """msgspec decode of the raw body, then fastcore."""
    policy = load_policy(None, [("USD", "RUB")])
    rules = load_rules(None, date(2026, 1, 1))
    validate, route, failed = fastcore.validate, fastcore.route, fastcore.ValidationFailed

    def once() -> None:
        r = REQUEST_DECODER.decode(body)
        try:
            instruction = validate(policy, *validation_fields(r, None))
        except failed:
            return
        route(
            rules,
            instruction.requested_window,
            r.source_currency,
            r.destination_currency,
            instruction.amount_minor,
            NOW,
        )

    return once


def pydantic_call(validate: Callable[[object], object], value: object) -> Callable[[], None]:
    def once() -> None:
        with contextlib.suppress(ValueError):  # pydantic's ValidationError is a ValueError
            validate(value)

    return once


def measure(number: int) -> dict[str, dict[str, dict[str, float]]]:
    """{case: {implementation: {"best_us", "median_us"}}} and the ratios the targets use."""
    if not fastcore.COMPILED:
        raise SystemExit("the compiled extension is not loaded: run `make install` first")
    twin = fastcore.load_twin()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for case, document in (("valid", VALID), ("invalid", INVALID)):
        body = json.dumps(document).encode()
        fields = validation_fields(REQUEST_DECODER.decode(body), None)
        row = {
            "fastcore": timed(fastcore_call(fastcore, fields), number),
            "twin": timed(fastcore_call(twin, fields), number // 10),
            "pydantic": timed(pydantic_call(TransactionModel.model_validate, document), number // 10),
            "fastcore_from_json": timed(from_json_call(body), number),
            "pydantic_from_json": timed(pydantic_call(TransactionModel.model_validate_json, body), number // 10),
        }
        results[case] = {name: {"best_us": best, "median_us": median} for name, (best, median) in row.items()}
        fc = row["fastcore"][0]
        results[case]["ratios"] = {
            "twin_over_fastcore": row["twin"][0] / fc,
            "pydantic_over_fastcore": row["pydantic"][0] / fc,
            "pydantic_json_over_fastcore_json": row["pydantic_from_json"][0] / row["fastcore_from_json"][0],
        }
    return results


def main() -> None:
    """Print a table (or the JSON the bench report embeds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = measure(args.number)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    names = ("fastcore", "twin", "pydantic", "fastcore_from_json", "pydantic_from_json")
    print(f"{'µs per transaction, best / median':<36}" + "".join(f"{n:>22}" for n in names))
    for case, row in results.items():
        cells = "".join(f"{row[n]['best_us']:>11.3f} / {row[n]['median_us']:<8.3f}" for n in names)
        print(f"{case:<36}{cells}")
        ratios = row["ratios"]
        print(
            f"{'':<36}twin {ratios['twin_over_fastcore']:.1f}x, pydantic {ratios['pydantic_over_fastcore']:.1f}x, "
            f"from JSON pydantic {ratios['pydantic_json_over_fastcore_json']:.1f}x slower than fastcore"
        )


if __name__ == "__main__":
    main()
