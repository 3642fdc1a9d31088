"""Generate the per-currency high-value thresholds and maximum amounts of the shipped settlement rules.

    python tools/generate_thresholds.py            rewrite the generated parts of both files
    python tools/generate_thresholds.py --check    exit 1 when either is out of date

Writes the `[thresholds]` table at the end of settlement/settlement_rules.toml and the table
between the markers in docs/settlement-rules.md. Every settleable ISO 4217 currency (fastcore's
table: minor units defined, not a fund code) gets a `high_value` worth about USD 1,000,000 and a
`max_amount` worth about USD 1,000,000,000, converted at the reference rates below and rounded to
the nearest, on a logarithmic scale, of 1, 2, 2.5 or 5 times a power of ten, so each is within a
factor of √2 of its USD value and easy to read. The USD values are exactly those two numbers.

The rates were written down without network access, from the author's knowledge of the rates
published for 31 December 2024; they were not checked against the publications. They are a
reference to review, not live FX: a threshold only has to be of the right size, and the rounding
absorbs a few per cent, but the rates marked in REVIEW can be far off.
"""

import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: fastcore is the checkout's

from fastcore.currencies import CURRENCIES  # noqa: E402

RULES = ROOT / "gateway" / "intake" / "settlement_rules.toml"
DOCS = ROOT / "docs" / "settlement-rules.md"
RATES_DAY = "31 December 2024"
HIGH_VALUE_USD = Decimal(1_000_000)
MAX_AMOUNT_USD = Decimal(1_000_000_000)
STEPS = (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5))

# ECB euro foreign exchange reference rates of 31 December 2024, units per euro; the others are
# crossed through the USD rate.
ECB = {
    "USD": "1.0389",
    "AUD": "1.6772",
    "BRL": "6.4253",
    "CAD": "1.4948",
    "CHF": "0.9412",
    "CNY": "7.5833",
    "CZK": "25.185",
    "DKK": "7.4578",
    "GBP": "0.82918",
    "HKD": "8.0686",
    "HUF": "411.35",
    "IDR": "16820.00",
    "ILS": "3.7865",
    "INR": "88.9335",
    "ISK": "143.90",
    "JPY": "163.06",
    "KRW": "1532.15",
    "MXN": "21.5504",
    "MYR": "4.6454",
    "NOK": "11.7950",
    "NZD": "1.8532",
    "PHP": "60.195",
    "PLN": "4.2750",
    "RON": "4.9743",
    "SEK": "11.4590",
    "SGD": "1.4164",
    "THB": "35.676",
    "TRY": "36.7372",
    "ZAR": "19.6188",
}

# Fixed to the euro (units per euro): the conversion rates or pegs of the issuing authority, and two
# currencies their central banks hold within a narrow band of the euro (de facto).
EURO_LINKED = {
    "BAM": ("1.95583", "currency board, fixed to the euro"),
    "CVE": ("110.265", "fixed to the euro"),
    "KMF": ("491.96775", "fixed to the euro"),
    "XAF": ("655.957", "fixed to the euro (CFA franc, BEAC)"),
    "XOF": ("655.957", "fixed to the euro (CFA franc, BCEAO)"),
    "XPF": ("119.33174", "fixed to the euro (CFP franc, 1,000 XPF = 8.38 EUR)"),
    "STN": ("24.5", "fixed to the euro"),
    "MKD": ("61.5", "held close to the euro by the National Bank (de facto)"),
    "RSD": ("117.0", "held close to the euro by the National Bank of Serbia (de facto)"),
}

# Fixed to another currency at par or a stated factor: (anchor, units of this per unit of the anchor).
PAR = {
    "BTN": ("INR", "1", "at par with the Indian rupee"),
    "NPR": ("INR", "1.6", "fixed at 1.6 per Indian rupee"),
    "FKP": ("GBP", "1", "at par with sterling"),
    "GIP": ("GBP", "1", "at par with sterling"),
    "SHP": ("GBP", "1", "at par with sterling"),
    "LSL": ("ZAR", "1", "at par with the rand"),
    "NAD": ("ZAR", "1", "at par with the rand"),
    "SZL": ("ZAR", "1", "at par with the rand"),
    "BND": ("SGD", "1", "at par with the Singapore dollar"),
    "MOP": ("HKD", "1.03", "fixed at 1.03 per Hong Kong dollar"),
}

# Units per US dollar: pegs, and for the rest approximately the central bank's official or the IMF's
# representative rate of about 31 December 2024.
PER_USD = {
    "AED": ("3.6725", "fixed to the US dollar"),
    "AWG": ("1.79", "fixed to the US dollar"),
    "AZN": ("1.70", "fixed to the US dollar (de facto)"),
    "BBD": ("2", "fixed to the US dollar"),
    "BHD": ("0.376", "fixed to the US dollar"),
    "BMD": ("1", "at par with the US dollar"),
    "BOB": ("6.96", "fixed to the US dollar (official rate)"),
    "BSD": ("1", "at par with the US dollar"),
    "BZD": ("2", "fixed to the US dollar"),
    "DJF": ("177.721", "fixed to the US dollar"),
    "ERN": ("15", "fixed to the US dollar"),
    "JOD": ("0.709", "fixed to the US dollar"),
    "KYD": ("0.8333", "fixed to the US dollar (1 KYD = 1.20 USD)"),
    "NIO": ("36.6243", "fixed to the US dollar"),
    "OMR": ("0.3845", "fixed to the US dollar"),
    "PAB": ("1", "at par with the US dollar"),
    "QAR": ("3.64", "fixed to the US dollar"),
    "SAR": ("3.75", "fixed to the US dollar"),
    "SVC": ("8.75", "fixed to the US dollar"),
    "TMT": ("3.5", "fixed to the US dollar (official rate)"),
    "XCD": ("2.70", "fixed to the US dollar"),
    "XCG": ("1.79", "fixed to the US dollar"),
    "MVR": ("15.42", "held in a band around 15.42 per US dollar"),
    "AFN": ("70.5", "approximate"),
    "ALL": ("94", "approximate"),
    "AMD": ("396", "approximate"),
    "AOA": ("912", "approximate"),
    "ARS": ("1032", "approximate, the central bank's wholesale rate"),
    "BDT": ("120", "approximate"),
    "BIF": ("2960", "approximate"),
    "BWP": ("13.9", "approximate"),
    "BYN": ("3.5", "approximate"),
    "CDF": ("2840", "approximate"),
    "CLP": ("995", "approximate"),
    "COP": ("4410", "approximate"),
    "CRC": ("507", "approximate"),
    "CUP": ("24", "the official rate for companies"),
    "DOP": ("61", "approximate"),
    "DZD": ("135", "approximate"),
    "EGP": ("50.8", "approximate"),
    "ETB": ("125", "approximate"),
    "FJD": ("2.32", "approximate"),
    "GEL": ("2.81", "approximate"),
    "GHS": ("14.7", "approximate"),
    "GMD": ("71", "approximate"),
    "GNF": ("8630", "approximate"),
    "GTQ": ("7.70", "approximate"),
    "GYD": ("209", "approximate"),
    "HNL": ("25.4", "approximate"),
    "HTG": ("131", "approximate"),
    "IQD": ("1310", "the central bank's official rate"),
    "IRR": ("42000", "the central bank's official rate"),
    "JMD": ("157", "approximate"),
    "KES": ("129.3", "approximate"),
    "KGS": ("87", "approximate"),
    "KHR": ("4020", "approximate"),
    "KPW": ("900", "the official rate as commonly quoted"),
    "KWD": ("0.3083", "approximate (the dinar is pegged to an undisclosed basket)"),
    "KZT": ("525", "approximate"),
    "LAK": ("21900", "approximate"),
    "LBP": ("89500", "the central bank's official rate since 2024"),
    "LKR": ("293", "approximate"),
    "LRD": ("182", "approximate"),
    "LYD": ("4.90", "approximate"),
    "MAD": ("10.1", "approximate"),
    "MDL": ("18.4", "approximate"),
    "MGA": ("4700", "approximate"),
    "MMK": ("2100", "the central bank's reference rate"),
    "MNT": ("3400", "approximate"),
    "MRU": ("39.8", "approximate"),
    "MUR": ("46.9", "approximate"),
    "MWK": ("1750", "approximate, the official rate"),
    "MZN": ("63.9", "approximate"),
    "NGN": ("1535", "approximate"),
    "PEN": ("3.76", "approximate"),
    "PGK": ("4.00", "approximate"),
    "PKR": ("278.5", "approximate"),
    "PYG": ("7800", "approximate"),
    "RUB": ("101.7", "approximate, the Bank of Russia's official rate"),
    "RWF": ("1380", "approximate"),
    "SBD": ("8.4", "approximate"),
    "SCR": ("14.4", "approximate"),
    "SDG": ("2000", "approximate"),
    "SLE": ("22.7", "approximate"),
    "SOS": ("571", "approximate"),
    "SRD": ("35", "approximate"),
    "SSP": ("4500", "approximate"),
    "SYP": ("13000", "the central bank's official rate"),
    "TJS": ("10.9", "approximate"),
    "TND": ("3.18", "approximate"),
    "TOP": ("2.40", "approximate"),
    "TTD": ("6.78", "approximate"),
    "TWD": ("32.8", "approximate"),
    "TZS": ("2420", "approximate"),
    "UAH": ("42.0", "approximate, the National Bank's official rate"),
    "UGX": ("3670", "approximate"),
    "UYU": ("44.0", "approximate"),
    "UYW": ("27", "approximate: the wage-indexed unit was worth about 1.63 UYU"),
    "UZS": ("12900", "approximate"),
    "VED": ("51.9", "approximate, the central bank's official rate"),
    "VES": ("51.9", "approximate, the central bank's official rate (the same bolívar as VED)"),
    "VND": ("25450", "approximate, the banks' selling rate (the central rate was lower)"),
    "VUV": ("120", "approximate"),
    "WST": ("2.78", "approximate"),
    "XAD": ("0.256", "3 SDR at about USD 1.30 per SDR"),
    "YER": ("2050", "approximate, the Aden central bank's rate"),
    "ZMW": ("27.8", "approximate"),
    "ZWG": ("25.8", "approximate, the official rate"),
}

# Rates to check first: several official rates, a parallel market far from the official one, an
# accounting unit, or a currency that moved fast around that day.
REVIEW = {
    "ARS": "crawling devaluation; parallel rates differ",
    "BYN": "recalled with low confidence",
    "CUP": "several official rates (24, 120) and an informal one far above",
    "ETB": "floated in July 2024 and moved fast",
    "IRR": "the market rate is more than ten times the official one",
    "KPW": "the market rate is many times the official one",
    "LBP": "recently unified",
    "MMK": "the market rate is about twice the reference rate",
    "NGN": "moved fast in 2024",
    "SDG": "war; official and market rates differ widely",
    "SSP": "moved fast in 2024; recalled with low confidence",
    "SYP": "the market rate differs from the official one",
    "UYW": "a wage-indexed accounting unit, not a cash currency",
    "VED": "fast inflation",
    "VES": "fast inflation",
    "XAD": "an accounting unit of the Arab Monetary Fund",
    "YER": "two central banks, two rates (Aden and Sana'a)",
    "ZWG": "new currency (2024); official and market rates differ",
}

TOML_MARKER = "# --- generated by tools/generate_thresholds.py: edit the rates there, not this table ---"
DOCS_BEGIN = "<!-- begin: generated by tools/generate_thresholds.py -->"
DOCS_END = "<!-- end: generated by tools/generate_thresholds.py -->"


def settleable() -> dict[str, int]:
    """Active ISO 4217 codes with defined minor units that are not fund codes: code -> minor units."""
    return {code: units for code, (units, fund) in CURRENCIES.items() if units is not None and not fund}


def readable(value: Decimal) -> int:
    """The nearest, on a logarithmic scale, of 1, 2, 2.5 or 5 times a power of ten (a whole number)."""
    exponent = value.adjusted()
    candidates = [step.scaleb(e) for e in (exponent - 1, exponent, exponent + 1) for step in STEPS]
    best = min(candidates, key=lambda c: max(value / c, c / value))
    assert best == best.to_integral_value(), f"{value} rounds below one whole unit"
    return int(best)


def rates() -> dict[str, tuple[Decimal, str]]:
    """Every settleable currency: (units per US dollar, where the rate comes from)."""
    usd_per_eur = Decimal(ECB["USD"])
    table: dict[str, tuple[Decimal, str]] = {"USD": (Decimal(1), "—")}
    table["EUR"] = (1 / usd_per_eur, f"ECB: 1 EUR = {ECB['USD']} USD")
    for code, per_eur in ECB.items():
        if code != "USD":
            table[code] = (Decimal(per_eur) / usd_per_eur, f"ECB: {per_eur} per EUR")
    for code, (per_eur, note) in EURO_LINKED.items():
        table[code] = (Decimal(per_eur) / usd_per_eur, f"{per_eur} per EUR, {note}")
    for code, (per_usd, note) in PER_USD.items():
        table[code] = (Decimal(per_usd), note)
    for code, (anchor, factor, note) in PAR.items():
        table[code] = (table[anchor][0] * Decimal(factor), note)
    codes = settleable()
    missing, extra = sorted(set(codes) - set(table)), sorted(set(table) - set(codes))
    assert not missing and not extra, f"rates missing for {missing}, not settleable: {extra}"
    return dict(sorted(table.items()))


def thresholds() -> dict[str, tuple[int, int]]:
    """Every settleable currency: (high_value, max_amount) in whole units of it."""
    values = {}
    for code, (per_usd, _) in rates().items():
        high_value, max_amount = readable(HIGH_VALUE_USD * per_usd), readable(MAX_AMOUNT_USD * per_usd)
        assert max_amount == high_value * 1000  # the rounding does not depend on the power of ten
        values[code] = (high_value, max_amount)
    return values


def _rate_text(per_usd: Decimal) -> str:
    """Five significant digits, grouped: 16,190 or 0.30830."""
    rounded = float(f"{per_usd:.5g}")
    return f"{rounded:,.0f}" if rounded >= 10_000 else f"{rounded:,.5g}"


def render_toml() -> str:
    """The `[thresholds]` table, from its marker line to the end of the rules file."""
    values = thresholds()
    width = max(len(f"{h:_}") for h, _ in values.values())
    max_width = max(len(f"{m:_}") for _, m in values.values())
    lines = [
        TOML_MARKER,
        "# Each currency's own amounts in whole units of it (high_value about USD 1,000,000, max_amount about",
        f"# USD 1,000,000,000), converted at the reference rates of {RATES_DAY} named in each comment and rounded",
        "# to 1, 2, 2.5 or 5 times a power of ten. A reference to review, not live FX: docs/settlement-rules.md.",
        "[thresholds]",
    ]
    for code, (per_usd, _) in rates().items():
        high_value, max_amount = values[code]
        lines.append(
            f"{code} = {{ high_value = {high_value:>{width}_}, max_amount = {max_amount:>{max_width}_} }}"
            f"  # {_rate_text(per_usd)} per USD"
        )
    return "\n".join(lines) + "\n"


def render_docs_table() -> str:
    """The Markdown table of every currency's rate, source and values, between its markers."""
    values = thresholds()
    lines = [
        DOCS_BEGIN,
        "",
        "| currency | units per USD | rate | high_value | max_amount | review |",
        "|---|--:|---|--:|--:|---|",
    ]
    for code, (per_usd, note) in rates().items():
        high_value, max_amount = values[code]
        lines.append(
            f"| {code} | {_rate_text(per_usd)} | {note} | {high_value:,} | {max_amount:,} | {REVIEW.get(code, '')} |"
        )
    lines += ["", DOCS_END]
    return "\n".join(lines)


def rendered_rules(current: str) -> str:
    """The rules file with its generated table replaced (appended when it has none)."""
    head = current.split(TOML_MARKER)[0].rstrip("\n")
    return head + "\n\n" + render_toml()


def rendered_docs(current: str) -> str:
    """The docs page with the text between its markers replaced."""
    before, _, rest = current.partition(DOCS_BEGIN)
    _, found, after = rest.partition(DOCS_END)
    if not found:
        raise SystemExit(f"{DOCS} lacks the markers {DOCS_BEGIN} ... {DOCS_END}")
    return before + render_docs_table() + after


if __name__ == "__main__":
    outputs = {RULES: rendered_rules(RULES.read_text()), DOCS: rendered_docs(DOCS.read_text())}
    if sys.argv[1:] == ["--check"]:
        stale = [str(path.relative_to(ROOT)) for path, text in outputs.items() if path.read_text() != text]
        sys.exit(f"out of date, regenerate: {', '.join(stale)}" if stale else 0)
    for path, text in outputs.items():
        path.write_text(text)
