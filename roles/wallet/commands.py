"""The wallet's REPL commands: parse a line, run it on the LightWallet, and the lines to print.

    /wallet new                       create the keystore file (asks for a passphrase)
    /wallet                           which wallet, which network, how many keys
    /address                          a new receive address
    /balance                          per asset: confirmed, unconfirmed, spendable, final, immature; the coins
    /send ADDRESS AMOUNT [TOKEN]      pay EPS (AMOUNT in EPS, up to 8 decimals) or a token (whole units)
    /issue TICKER SUPPLY "NAME"       issue a token, its whole supply to a new address of this wallet
    /token TICKER                     what the node knows of a token (gettoken)
    /history [COUNT]                  the last COUNT (50) transactions, what each did to the balance

peer_client.py calls `run`; a WalletError becomes one error line (and, with
--send, exit code 1).
"""

from __future__ import annotations

import shlex
import sqlite3
import time
from pathlib import Path
from typing import Callable

from protocol.messages import Error, Message
from protocol.networks import Network
from roles.wallet.coins import DEFAULT_FEE_RATE, EPS, WalletError, estimated_size, format_amount
from roles.wallet.keystore import FILE_MODE, Keystore, KeystoreError
from roles.wallet.light_wallet import LightWallet, NodeLink, confirmations_text
from roles.wallet.spv import FINAL_CONFIRMATIONS

COMMANDS = ("/wallet", "/address", "/balance", "/send", "/issue", "/token", "/history")
COINS_SHOWN = 20  # /balance lists this many coins, newest first
HISTORY_SHOWN = 50  # /history lists this many transactions, the newest
HELP = """Wallet commands (with --wallet FILE):
  /wallet new                     create the wallet file (encrypted; passphrase from EPSCOIN_PASSPHRASE or a prompt)
  /address                        a new receive address
  /balance                        confirmed (merkle-proven) and unconfirmed, per token; 6 confirmations are final
  /send ADDRESS AMOUNT [TOKEN]    pay EPS, or whole units of a token; signed here, sent as `tx`
  /issue TICKER SUPPLY "NAME"     issue a token; its supply goes to a new address of this wallet
  /token TICKER                   what the node knows of a token
  /history [COUNT]                the wallet's last COUNT transactions (50)"""

Passphrase = Callable[[bool], str]  # confirm? -> the passphrase; raises WalletError when none can be had


def data_path(keystore_path: Path) -> Path:
    """Headers and transactions, next to the keystore: public data, not encrypted."""
    return keystore_path.with_name(keystore_path.name + ".spv")


class WalletCommands:
    """The wallet side of the REPL: one keystore file, opened before connecting, used once the node is known."""

    def __init__(self, path: Path | None, passphrase: Passphrase, link: NodeLink,
                 node_network: Callable[[], Network], keystore: Keystore | None = None,
                 fee_rate: int = DEFAULT_FEE_RATE) -> None:
        self.path = path
        self.passphrase = passphrase
        self.link = link
        self.node_network = node_network
        self.keystore = keystore
        self.fee_rate = fee_rate
        self._wallet: LightWallet | None = None

    @staticmethod
    def handles(line: str) -> bool:
        return line.split(maxsplit=1)[0] in COMMANDS if line.strip() else False

    @property
    def wallet(self) -> LightWallet:
        """The LightWallet, made on first use (it needs the node's network)."""
        if self._wallet is None:
            if self.path is None:
                raise WalletError("no wallet: start peer_client.py with --wallet FILE")
            if self.keystore is None:
                raise WalletError(f"no wallet at {self.path}: create it with /wallet new")
            self._wallet = LightWallet(self.keystore, self.node_network(), data_path(self.path), self.link,
                                       self.fee_rate)
        return self._wallet

    @property
    def loaded(self) -> bool:
        return self.keystore is not None

    def take_events(self) -> list:
        """The wallet's news not yet shown (WalletEvent); none before the wallet is in use."""
        return self._wallet.take_events() if self._wallet is not None else []

    def update(self) -> None:
        """Refresh from the node (the interactive poller); news waits in take_events."""
        self.wallet.update()

    def summary(self) -> list[str]:
        """The balance table: the first thing an interactive session shows."""
        self.wallet.update()
        self.wallet.take_events()  # the baseline: news is what changes after this
        return self._balance_table(self.wallet)

    def run(self, line: str) -> list[str]:
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise WalletError(f"cannot read the command: {error}") from None
        command, args = words[0], words[1:]
        handler = {"/wallet": self._wallet_command, "/address": self._address, "/balance": self._balance,
                   "/send": self._send, "/issue": self._issue, "/token": self._token,
                   "/history": self._history}[command]
        try:
            return handler(args)
        except sqlite3.Error as error:  # e.g. a damaged FILE.spv: it holds nothing secret and can be deleted
            raise WalletError(f"the wallet's data file {data_path(self.path)} failed: {error}") from None

    # -- the commands ----------------------------------------------------------------------------

    def _wallet_command(self, args: list[str]) -> list[str]:
        if args == ["new"]:
            return self._create()
        if args:
            raise WalletError("usage: /wallet new, or /wallet to describe it")
        wallet = self.wallet
        receive = wallet.receive_addresses()
        return [f"{self.path}: {wallet.network.name} wallet, {len(wallet.keystore.keys)} keys "
                f"({len(receive)} receive), headers to height {wallet.chain.height}",
                f"newest receive address: {receive[-1]}"]

    def _create(self) -> list[str]:
        if self.path is None:
            raise WalletError("no wallet file: start peer_client.py with --wallet FILE")
        if self.keystore is not None or self.path.exists():
            raise WalletError(f"{self.path} already exists; not overwriting a wallet")
        network = self.node_network()
        try:
            self.keystore = Keystore.create(self.path, self.passphrase(True), network.name)
        except KeystoreError as error:
            raise WalletError(str(error)) from None
        address = self.wallet.receive_addresses()[0]
        return [f"created {self.path}: a {network.name} wallet, keys encrypted (scrypt, ChaCha20-Poly1305), "
                f"mode {FILE_MODE:04o}", f"first receive address: {address}"]

    def _address(self, args: list[str]) -> list[str]:
        if args:
            raise WalletError("usage: /address")
        return [self.wallet.new_address()]

    def _balance(self, args: list[str]) -> list[str]:
        if args:
            raise WalletError("usage: /balance")
        wallet = self.wallet
        wallet.update()
        lines = self._balance_table(wallet)
        for coin in sorted(wallet.coins, key=lambda c: (c.height is not None, -(c.height or 0)))[:COINS_SHOWN]:
            depth = "unconfirmed" if coin.height is None else \
                f"{confirmations_text(wallet.chain.confirmations(coin.height))}, block {coin.height}"
            notes = [note for note, on in (("coinbase", coin.coinbase), ("change", coin.from_self)) if on]
            if not wallet.spendable(coin):
                notes.append("not yet spendable")
            lines.append(f"  {format_amount(coin.amount, coin.token):>24}  {coin.address}  {depth}"
                         f"{'  (' + ', '.join(notes) + ')' if notes else ''}  {coin.outpoint.txid}:{coin.outpoint.index}")
        if len(wallet.coins) > COINS_SHOWN:
            lines.append(f"  and {len(wallet.coins) - COINS_SHOWN} more")
        return lines

    @staticmethod
    def _balance_table(wallet: LightWallet) -> list[str]:
        rows = [("asset", "confirmed", "unconfirmed", "spendable", f"final ({FINAL_CONFIRMATIONS}+)", "immature")]
        for balance in wallet.balances():
            token = None if balance.asset == EPS else balance.asset
            rows.append((balance.asset, *(_number(value, token) for value in (
                balance.confirmed, balance.unconfirmed, balance.spendable, balance.final, balance.immature))))
        return _table(rows) + [f"headers verified to height {wallet.chain.height}; {len(wallet.coins)} coin(s), each "
                               "confirmed one proven by a merkle branch to a header of that chain"]

    def _send(self, args: list[str]) -> list[str]:
        if len(args) not in (2, 3):
            raise WalletError("usage: /send ADDRESS AMOUNT [TOKEN]")
        token = args[2].upper() if len(args) == 3 else None
        sent = self.wallet.send(args[0], args[1], token)
        paid = sent.draft.tx.outputs[0]
        lines = [f"sent {sent.txid}",
                 f"  {format_amount(paid.amount, paid.token)} to {paid.address}; {_fee_text(sent.draft.fee, sent.draft.tx)}"]
        lines += [f"  change {format_amount(out.amount, out.token)} to {out.address}" for out in sent.draft.change]
        return lines

    def _issue(self, args: list[str]) -> list[str]:
        if len(args) != 3:
            raise WalletError('usage: /issue TICKER SUPPLY "NAME"')
        sent, issuer, holder = self.wallet.issue(args[0].upper(), args[1], args[2])
        issue = sent.draft.tx.issue
        return [f"sent {sent.txid}",
                f"  issues {issue.ticker} ({issue.name!r}): {issue.supply} units to {holder}",
                f"  issuer {issuer} (the address input 0 spends); {_fee_text(sent.draft.fee, sent.draft.tx)}"]

    def _token(self, args: list[str]) -> list[str]:
        if len(args) != 1:
            raise WalletError("usage: /token TICKER")
        wallet = self.wallet
        info = wallet.token_info(args[0].upper())
        wallet.update()
        held = next((b for b in wallet.balances() if b.asset == info.ticker), None)
        holding = f"this wallet holds {held.confirmed} confirmed, {held.unconfirmed} unconfirmed" if held else \
            "this wallet holds none"
        return [f"{info.ticker} ({info.name!r}): supply {info.supply}, burned {info.burned}, "
                f"{info.holders} holder address(es)",
                f"  issued by {info.issuer} in tx {info.txid} at height {info.height}; {holding}"]

    def _history(self, args: list[str]) -> list[str]:
        if len(args) > 1 or (args and not args[0].isdigit()):
            raise WalletError("usage: /history [COUNT]")
        shown = int(args[0]) if args else HISTORY_SHOWN
        wallet = self.wallet
        wallet.update()
        entries = wallet.history()
        if not entries:
            return ["no transactions yet"]
        # Chain order, then the unconfirmed by when they were seen: newest last, as a statement reads.
        entries.sort(key=lambda e: (e.height is None, e.height or 0, e.seen))
        lines = [f"{len(entries) - shown} older transaction(s) not shown (/history COUNT shows more)"] \
            if len(entries) > shown else []
        for entry in entries[max(0, len(entries) - shown):]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.seen))
            status = "unconfirmed" if entry.height is None else \
                f"{confirmations_text(wallet.chain.confirmations(entry.height))} (block {entry.height})"
            change = ", ".join(f"{'+' if amount > 0 else ''}{format_amount(amount, None if asset == EPS else asset)}"
                               for asset, amount in sorted(entry.net.items(), key=lambda kv: (kv[0] != EPS, kv[0])))
            extras = []
            if entry.fee is not None:
                extras.append(f"fee {format_amount(entry.fee)}")
            if entry.issued:
                extras.append(f"issued {entry.issued}")
            lines.append(f"{when}  {entry.txid}  {change or 'nothing to this wallet'}"
                         f"{'  (' + ', '.join(extras) + ')' if extras else ''}  {status}")
        return lines


def _number(value: int, token: str | None) -> str:
    return format_amount(value, token).rsplit(" ", 1)[0]


def _fee_text(fee: int, tx) -> str:
    size = estimated_size(tx)
    return f"fee {format_amount(fee)} ({size} bytes at most, signed)"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def error_text(answer: Message) -> str:
    return answer.reason if isinstance(answer, Error) else answer.command
