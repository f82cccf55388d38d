"""The token layer: named tokens issued on chain, carried by outputs like coins (colored outputs).

The lecture puts a token layer (EPSCoin, an xShop token) above the protocol
and blockchain layers. EPS is the native coin; any other token is created once
by an `issue` in a transaction, which names it and fixes its supply:

    "issue": {"ticker": "XSHOP", "name": "xShop", "supply": 1000}

Its units then travel in outputs that name the token,

    {"address": "E5mx..", "amount": 10, "token": "XSHOP"}

and every transaction conserves every token: what its inputs hold of a token,
its outputs hold too, except what it destroys with an explicit `burn`. Fees are
always paid in EPS. The rules are in protocol.consensus; this module holds the
formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from protocol.fields import utf8_encodable

NATIVE_TICKER = "EPS"  # the native coin: an output without "token" is EPS
TICKER = re.compile(r"[A-Z][A-Z0-9]{2,7}")
MAX_TOKEN_SUPPLY = 2**53 - 1  # whole units; the largest integer every JSON parser reads exactly
MAX_TOKEN_NAME = 40
MAX_BURNS = 16
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class TokenFormatError(ValueError):
    """A token field is not well formed (before any rule about balances)."""


def check_ticker(ticker: Any) -> str:
    if not isinstance(ticker, str) or not TICKER.fullmatch(ticker) or ticker == NATIVE_TICKER:
        raise TokenFormatError("a ticker is 3 to 8 capital letters or digits, starting with a letter, "
                               f"and not {NATIVE_TICKER}")
    return ticker


def _units(value: Any, what: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_TOKEN_SUPPLY:
        raise TokenFormatError(f"{what} must be a whole number of units from 1 to {MAX_TOKEN_SUPPLY}")
    return value


@dataclass(frozen=True)
class TokenIssue:
    """Creates `supply` units of a new token; the transaction's outputs must hold exactly that."""

    ticker: str
    name: str
    supply: int

    def to_json(self) -> dict[str, Any]:
        return {"ticker": self.ticker, "name": self.name, "supply": self.supply}

    @classmethod
    def from_json(cls, item: Any) -> "TokenIssue":
        if not isinstance(item, dict):
            raise TokenFormatError("'issue' must be an object {ticker, name, supply}")
        name = item.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TOKEN_NAME or _CONTROL.search(name) \
                or not name.strip() or not utf8_encodable(name):
            raise TokenFormatError(f"a token name is 1 to {MAX_TOKEN_NAME} printable characters")
        return cls(ticker=check_ticker(item.get("ticker")), name=name,
                   supply=_units(item.get("supply"), "a token supply"))


@dataclass(frozen=True)
class TokenBurn:
    """Destroys `amount` units of a token the transaction's inputs hold."""

    token: str
    amount: int

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "amount": self.amount}

    @classmethod
    def from_json(cls, item: Any) -> "TokenBurn":
        if not isinstance(item, dict):
            raise TokenFormatError("each burn must be an object {token, amount}")
        return cls(token=check_ticker(item.get("token")), amount=_units(item.get("amount"), "a burn amount"))


def burns_from_json(value: Any) -> tuple[TokenBurn, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_BURNS:
        raise TokenFormatError(f"'burn' must be a list of 1 to {MAX_BURNS} burns")
    burns = tuple(TokenBurn.from_json(item) for item in value)
    if len({burn.token for burn in burns}) != len(burns):
        raise TokenFormatError("'burn' names each token at most once")
    return burns

