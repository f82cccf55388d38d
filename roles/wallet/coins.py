"""The wallet's coins, and how a payment is made of them: selection, change, fee.

A payment spends whole coins (unspent outputs) and creates new ones: the
payee's, and change back to the wallet. What the inputs hold beyond the
outputs is the fee, always in EPS. A token payment (token-spec) picks coins of
that token for the amount and EPS coins for the fee, so it may have change
in both.

Coin selection, for each asset: the smallest single coin that covers the
whole need, if there is one (big coins stay whole and the transaction stays
small); otherwise the largest coins first until they cover it (few inputs,
so a small fee). Bitcoin Core tries harder (branch and bound, knapsack), but
this is the rule it falls back to, and it is easy to follow by hand.

The fee is the fee rate times the size of the signed transaction, estimated
with 72-byte signatures (the longest DER): the real one is never larger, so
the fee rate paid is never below the rate asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence

from protocol.tokens import MAX_TOKEN_SUPPLY, NATIVE_TICKER, TokenIssue
from protocol.transaction import COIN, MAX_MONEY, OutPoint, Transaction, TxIn, TxOut

EPS = NATIVE_TICKER
DEFAULT_FEE_RATE = 2  # base units per byte: twice the nodes' minimum relay rate (1,000 per 1,000 bytes)
DUST = 546  # base units: change below Bitcoin's dust threshold costs more to spend than it is worth; it goes to the fee
PLACEHOLDER_SIGNATURE = "00" * 72  # the longest DER signature, for size estimates
PLACEHOLDER_PUBKEY = "02" + "00" * 32


class WalletError(Exception):
    """A wallet command cannot be carried out; str() is one line for the person."""


class InsufficientFunds(WalletError):
    pass


@dataclass(frozen=True)
class WalletCoin:
    """An unspent output paying one of the wallet's addresses, as far as the wallet has checked it."""

    outpoint: OutPoint
    address: str
    amount: int  # base units of EPS, or whole token units
    token: str | None  # None: EPS
    coinbase: bool
    height: int | None  # of its block on the wallet's own header chain; None while unconfirmed
    from_self: bool = False  # change from a transaction this wallet made: spendable before it confirms

    @property
    def asset(self) -> str:
        return self.token or EPS


def parse_amount(text: str, token: str | None) -> int:
    """'12.5' EPS -> 1,250,000,000 base units; token amounts are whole units. WalletError when not a positive amount."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise WalletError(f"{text!r} is not an amount") from None
    if not value.is_finite() or value <= 0:
        raise WalletError("the amount must be positive")
    if token is None:
        units = value * COIN
        if units != units.to_integral_value():
            raise WalletError("EPS amounts have at most 8 decimals")
        if units > MAX_MONEY:
            raise WalletError("the amount exceeds the money supply")
        return int(units)
    if value != value.to_integral_value():
        raise WalletError(f"{token} is counted in whole units")
    if value > MAX_TOKEN_SUPPLY:
        raise WalletError(f"a token amount is at most {MAX_TOKEN_SUPPLY}")
    return int(value)


def format_amount(amount: int, token: str | None = None) -> str:
    if token is None or token == EPS:
        sign = "-" if amount < 0 else ""
        whole, part = divmod(abs(amount), COIN)
        return f"{sign}{whole}.{part:08d} EPS"
    return f"{amount} {token}"


@dataclass(frozen=True)
class Draft:
    """An unsigned payment: the transaction, the coin each input spends, and what it costs."""

    tx: Transaction
    spent: tuple[WalletCoin, ...]  # input i spends spent[i]
    fee: int
    change: tuple[TxOut, ...]


def estimated_size(tx: Transaction) -> int:
    """Bytes of the transaction once signed, at most: every input with a pubkey and a 72-byte signature."""
    inputs = tuple(replace(txin, pubkey=PLACEHOLDER_PUBKEY, signature=PLACEHOLDER_SIGNATURE) for txin in tx.inputs)
    return replace(tx, inputs=inputs).size


def fee_for(tx: Transaction, fee_rate: int) -> int:
    return math.ceil(estimated_size(tx) * fee_rate)


def choose(coins: Sequence[WalletCoin], need: Callable[[list[WalletCoin]], int]) -> list[WalletCoin]:
    """Coins whose sum covers need(chosen): the smallest single coin that does, else the largest first.

    `need` may grow with the coins chosen (each input adds to the fee).
    """
    for coin in sorted(coins, key=lambda c: (c.amount, c.outpoint.txid, c.outpoint.index)):
        if coin.amount >= need([coin]):
            return [coin]
    chosen: list[WalletCoin] = []
    for coin in sorted(coins, key=lambda c: (-c.amount, c.outpoint.txid, c.outpoint.index)):
        chosen.append(coin)
        if sum(c.amount for c in chosen) >= need(chosen):
            return chosen
    total = sum(c.amount for c in coins)
    raise InsufficientFunds(f"not enough to spend: {_asset_text(coins, total)} available, "
                            f"{_asset_text(coins, need(list(coins)))} needed")


def _asset_text(coins: Sequence[WalletCoin], amount: int) -> str:
    token = coins[0].token if coins else None
    return format_amount(amount, token)


def build_payment(spendable: Sequence[WalletCoin], outputs: Sequence[TxOut], change_address: str,
                  fee_rate: int = DEFAULT_FEE_RATE, issue: TokenIssue | None = None) -> Draft:
    """Choose coins for `outputs` (EPS and tokens), add change, and price the fee. Unsigned.

    With `issue`, outputs of the issued ticker are new units (no coins are chosen for them),
    and input 0 is an EPS coin: its address becomes the token's issuer (token-spec).
    """
    issued = issue.ticker if issue else None
    token_inputs: list[WalletCoin] = []
    token_change: list[TxOut] = []
    for token in sorted({o.token for o in outputs if o.token is not None and o.token != issued}):
        want = sum(o.amount for o in outputs if o.token == token)
        candidates = [c for c in spendable if c.token == token]
        if not candidates:
            raise InsufficientFunds(f"no spendable {token} in this wallet")
        chosen = choose(candidates, lambda _: want)
        token_inputs += chosen
        surplus = sum(c.amount for c in chosen) - want
        if surplus:
            token_change.append(TxOut(surplus, change_address, token))
    eps_candidates = [c for c in spendable if c.token is None]
    eps_out = sum(o.amount for o in outputs if o.token is None)

    def assemble(eps_inputs: list[WalletCoin], eps_change: int | None) -> tuple[Transaction, tuple[WalletCoin, ...]]:
        spent = tuple(eps_inputs) + tuple(token_inputs)  # EPS first: input 0 names an issuer
        change = list(token_change) + ([TxOut(eps_change, change_address)] if eps_change is not None else [])
        tx = Transaction(inputs=tuple(TxIn(prevout=c.outpoint) for c in spent),
                         outputs=tuple(outputs) + tuple(change), issue=issue)
        return tx, spent

    def need(eps_inputs: list[WalletCoin]) -> int:
        tx, _ = assemble(eps_inputs, MAX_MONEY)  # priced with the longest change output: never too low
        return eps_out + fee_for(tx, fee_rate)

    if not eps_candidates:
        raise InsufficientFunds("no spendable EPS in this wallet to pay the fee" if eps_out == 0
                                else "no spendable EPS in this wallet")
    eps_inputs = choose(eps_candidates, need)
    total_in = sum(c.amount for c in eps_inputs)
    change = total_in - need(eps_inputs)
    if change >= DUST:
        tx, spent = assemble(eps_inputs, change)
    else:
        tx, spent = assemble(eps_inputs, None)  # the crumbs go to the miner
    fee = total_in - eps_out - (change if change >= DUST else 0)
    return Draft(tx=tx, spent=spent, fee=fee, change=tuple(o for o in tx.outputs[len(outputs):]))
