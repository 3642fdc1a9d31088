"""The transaction as the brief's original stack would model it: a Pydantic v2 model with validators.

The same rules as fastcore's (identifiers, active ISO 4217 currencies with minor units, exact amounts
within the currency's minor units and the maximum, distinct accounts, blocked pairs, windows,
bounded metadata). Used by the FastAPI peer and by the micro-benchmark.
"""

from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fastcore.currencies import CURRENCIES

SETTLEABLE = {code: units for code, (units, fund) in CURRENCIES.items() if units is not None and not fund}
MAX_AMOUNT = Decimal(1_000_000_000)
BLOCKED_PAIRS = {("USD", "RUB")}

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class TransactionModel(BaseModel):
    """A payment instruction, validated field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    amount: Decimal
    source_currency: Currency
    destination_currency: Currency
    source_account: Identifier
    destination_account: Identifier
    counterparty_id: Identifier
    idempotency_key: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$")] | None = None
    settlement_window: Literal["rtgs", "t0", "t1"] | None = None
    metadata: (
        Annotated[
            dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=256)]],
            Field(max_length=16),
        ]
        | None
    ) = None

    @field_validator("amount", mode="before")
    @classmethod
    def exact_amount(cls, value: object) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be a number or a decimal string")
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise ValueError("must be a decimal number") from None
        if not amount.is_finite() or amount <= 0:
            raise ValueError("must be greater than zero")
        return amount

    @field_validator("source_currency", "destination_currency")
    @classmethod
    def active_currency(cls, code: str) -> str:
        if code not in SETTLEABLE:
            raise ValueError("must be an active ISO 4217 currency code")
        return code

    @model_validator(mode="after")
    def cross_field_rules(self) -> "TransactionModel":
        units = SETTLEABLE[self.source_currency]
        if self.amount.as_tuple().exponent < -units:  # type: ignore[operator]
            raise ValueError(f"amount: at most {units} decimal places for {self.source_currency}")
        if self.amount > MAX_AMOUNT:
            raise ValueError("amount: above the maximum")
        if self.source_account == self.destination_account:
            raise ValueError("destination_account must differ from source_account")
        if (self.source_currency, self.destination_currency) in BLOCKED_PAIRS:
            raise ValueError("currency pair is blocked")
        return self
