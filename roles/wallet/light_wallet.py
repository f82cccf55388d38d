"""The light wallet: keys here, coins and proofs asked of a wallet-services node, every answer checked.

One refresh, in the order a careful SPV wallet works:

1. Headers: `getheaders` with the wallet's locator until the node has no more;
   each header is checked (spv.HeaderChain) and the most-work chain followed.
2. Coins: `getutxos` for every address of the keystore (100 a question, paged).
3. Content: `gettx` for each transaction not seen before; its JSON must hash
   to its txid, and the output must pay what the coin list says.
4. Proofs: `getproof` for each confirmed one not yet proven on the current
   best chain; spv.verify_proof must accept it, or the coin is not counted.
   Confirmations are counted on the wallet's own header chain.

A payment is chosen and priced by coins.build_payment, signed here with the
keystore's keys, and sent as an ordinary `tx`; the node answers a client
with `txinfo` or the reason it refused.

News comes by asking again: a node announces blocks and transactions (`inv`)
only to node peers, and a wallet is a client, so the interactive REPL refreshes
every few seconds and prints what changed.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from protocol.coin_address import decode_address
from protocol.consensus import ConsensusError
from protocol.messages import (Error, GetHeaders, GetProof, GetToken, GetTx, GetUtxos, Headers, Message, Proof,
                               TokenInfo, TxInfo, TxMessage, UtxoRow, Utxos)
from protocol.messages.blocks import MAX_HEADERS
from protocol.messages.wallet import MAX_ADDRESSES_PER_QUERY
from protocol.networks import Network
from protocol.tokens import TokenFormatError, TokenIssue
from protocol.transaction import OutPoint, Transaction, TxOut
from roles.wallet.coins import (DEFAULT_FEE_RATE, EPS, Draft, WalletCoin, WalletError, build_payment,
                                format_amount, parse_amount)
from roles.wallet.history import HistoryEntry, TxStore, history
from roles.wallet.keystore import Keystore, StoredKey, fresh_key
from roles.wallet.spv import FINAL_CONFIRMATIONS, HeaderChain, ProofError, open_data, verify_proof

BATCH = 100  # requests per exchange: answers to 100 getproof are ~100 KB
MAX_HEADER_ROUNDS = 10_000  # 2,000 headers a round: 20 million blocks, a bound that is never reached


class NodeLink(Protocol):
    """What the wallet needs of a connection: send requests, get their answers in order."""

    def exchange(self, requests: Sequence[Message]) -> list[Message]: ...


@dataclass(frozen=True)
class Balance:
    asset: str
    confirmed: int  # proven by a merkle branch to a header of the wallet's best chain
    final: int  # the part of confirmed that is FINAL_CONFIRMATIONS or more deep
    immature: int  # the part of confirmed in coinbases not yet spendable (network maturity)
    unconfirmed: int  # waiting in the node's mempool
    spendable: int
    coins: int


@dataclass(frozen=True)
class WalletEvent:
    kind: str  # "incoming", "confirmed", "final", "rejected"
    text: str


@dataclass(frozen=True)
class Sent:
    txid: str
    draft: Draft


@dataclass
class _Seen:
    """What the last refresh knew of one transaction, to tell the person what changed."""

    confirmations: int
    mine: bool
    paid: dict[str, int] = field(default_factory=dict)  # asset -> amount to the wallet's addresses


class LightWallet:
    def __init__(self, keystore: Keystore, network: Network, data_path: Path, link: NodeLink,
                 fee_rate: int = DEFAULT_FEE_RATE) -> None:
        if keystore.network != network.name:
            raise WalletError(f"{keystore.path} is a {keystore.network} wallet; the node is on {network.name}")
        self.keystore = keystore
        self.network = network
        self.link = link
        self.fee_rate = fee_rate
        self._db = open_data(data_path)
        self.chain = HeaderChain(self._db, network)
        self.txs = TxStore(self._db)
        self._lock = threading.RLock()  # one refresh or command at a time (the REPL and its poller)
        self.coins: list[WalletCoin] = []
        self.rejected: dict[str, str] = {}  # txid -> why its proof or content was refused, this session
        self._seen: dict[str, _Seen] | None = None  # None until the first refresh: no news before a baseline
        self._events: list[WalletEvent] = []
        self._by_address: dict[str, StoredKey] = {}

    # -- keys ------------------------------------------------------------------------------------

    def _keys(self) -> dict[str, StoredKey]:
        """Address -> key. Kept, since deriving an address costs an EC multiplication; keys are only added."""
        if len(self._by_address) != len(self.keystore.keys):
            self._by_address = {key.address(self.network): key for key in self.keystore.keys}
        return self._by_address

    @property
    def addresses(self) -> list[str]:
        return list(self._keys())

    def receive_addresses(self) -> list[str]:
        return [key.address(self.network) for key in self.keystore.keys if key.kind == "receive"]

    def new_address(self) -> str:
        with self._lock:
            return self.keystore.add_key("receive").address(self.network)

    # -- talking to the node -------------------------------------------------------------------

    def _ask(self, requests: Sequence[Message]) -> list[Message]:
        """Answers in order, BATCH requests per exchange; an `error` stays in the list for the caller."""
        answers: list[Message] = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start:start + BATCH]
            got = self.link.exchange(chunk)
            if len(got) != len(chunk):
                raise WalletError(f"the node answered {len(got)} of {len(chunk)} wallet requests")
            for answer in got:
                if isinstance(answer, Error) and "not served" in answer.reason:
                    raise WalletError(f"the node does not serve light wallets ({answer.reason}); "
                                      "it needs --roles ...,wallet-services")
            answers += got
        return answers

    # -- refresh ---------------------------------------------------------------------------------

    def update(self) -> None:
        """One refresh: headers, coins, contents and proofs, as the module docstring says.

        What changed since the last one (a payment arriving, a confirmation, a refused proof)
        waits in take_events for the REPL to print.
        """
        with self._lock:
            self._refresh()

    def take_events(self) -> list[WalletEvent]:
        """News not yet shown (a command's own refresh keeps them here for the REPL to print)."""
        with self._lock:
            events, self._events = self._events, []
            return events

    def _refresh(self) -> None:
        self.sync_headers()
        rows = self._fetch_utxos()
        rejected_before = dict(self.rejected)
        self._fetch_contents({row.txid for row in rows})
        self.coins = self._check_coins(rows)
        self._prove_own_payments()
        self._events += [WalletEvent("rejected", f"rejected: {why}") for txid, why in self.rejected.items()
                         if rejected_before.get(txid) != why]  # each refusal told once, not every refresh
        self._events += self._news()

    def sync_headers(self) -> int:
        """Fetch headers until the node has none to add; the wallet's best height."""
        with self._lock:
            for _ in range(MAX_HEADER_ROUNDS):
                (answer,) = self._ask([GetHeaders(locator=tuple(self.chain.locator()))])
                if not isinstance(answer, Headers):
                    raise WalletError(f"the node did not send headers: {_reason(answer)}")
                try:
                    self.chain.add(list(answer.headers))
                except ConsensusError as error:
                    raise WalletError(f"the node sent an invalid header: {error}") from None
                if len(answer.headers) < MAX_HEADERS:
                    break
            return self.chain.height

    def _fetch_utxos(self) -> list[UtxoRow]:
        rows: list[UtxoRow] = []
        addresses = self.addresses
        for start in range(0, len(addresses), MAX_ADDRESSES_PER_QUERY):
            chunk = tuple(addresses[start:start + MAX_ADDRESSES_PER_QUERY])
            after = None
            while True:
                (answer,) = self._ask([GetUtxos(addresses=chunk, after=after)])
                if not isinstance(answer, Utxos):
                    raise WalletError(f"the node did not list the wallet's coins: {_reason(answer)}")
                rows += answer.utxos
                if answer.next is None:
                    break
                after = answer.next
        return rows

    def _fetch_contents(self, txids: set[str]) -> None:
        """Store each transaction not yet stored, if its content hashes to its txid."""
        wanted = sorted(txid for txid in txids if self.txs.get(txid) is None)
        for txid, answer in zip(wanted, self._ask([GetTx(txid=txid) for txid in wanted])):
            if not isinstance(answer, TxInfo):
                self.rejected[txid] = f"tx {txid}: the node lists a coin of it but will not show it " \
                                      f"({_reason(answer)})"
            elif answer.tx.txid != txid:  # computed here from the JSON, not taken from the node
                self.rejected[txid] = f"tx {txid}: the node sent a transaction whose content hashes to " \
                                      f"{answer.tx.txid}"
            else:
                self.txs.put(answer.tx)

    def _check_coins(self, rows: list[UtxoRow]) -> list[WalletCoin]:
        """The coins that pass every check, with heights on the wallet's own chain."""
        mine = set(self.addresses)
        checked: list[tuple[UtxoRow, TxOut]] = []
        for row in rows:
            stored = self.txs.get(row.txid)
            if stored is None:
                continue  # refused in _fetch_contents
            outputs = stored.tx.outputs
            output = outputs[row.index] if row.index < len(outputs) else None
            if output is None or output.address != row.address or output.amount != row.amount or \
                    output.token != row.token or row.address not in mine:
                self.rejected[row.txid] = f"tx {row.txid}: the node's coin {row.index} does not match the " \
                                          "transaction's output"
                continue
            checked.append((row, output))
        heights = self._prove({row.txid for row, _ in checked if row.height is not None})
        coins = []
        for row, output in checked:
            stored = self.txs.get(row.txid)
            height = None
            if row.height is not None:
                if row.txid not in heights:
                    continue  # claimed confirmed, not proven: not counted at all
                height = heights[row.txid]
            elif stored.block is not None:
                self.txs.set_block(row.txid, None, None)  # back in the mempool: a reorg took its block
            coins.append(WalletCoin(OutPoint(row.txid, row.index), row.address, row.amount, output.token,
                                    row.coinbase, height, from_self=stored.mine))
        return coins

    def _prove(self, txids: set[str]) -> dict[str, int]:
        """Heights on the wallet's best chain of these confirmed transactions, each proven; refusals noted."""
        heights: dict[str, int] = {}
        wanted = []
        for txid in sorted(txids):
            stored = self.txs.get(txid)
            if stored.block is not None and self.chain.active_height(stored.block) == stored.height:
                heights[txid] = stored.height  # proven before, and its block is still on the best chain
            else:
                wanted.append(txid)
        proofs = list(zip(wanted, self._ask([GetProof(txid=txid) for txid in wanted])))
        if any(isinstance(p, Proof) and not self.chain.knows(p.header.block_id) for _, p in proofs):
            self.sync_headers()  # a block found since our headers were fetched
        for txid, proof in proofs:
            if not isinstance(proof, Proof):
                continue  # not confirmed after all (a block came and went): counted next time
            try:
                height = verify_proof(proof, txid, self.chain)
            except ProofError as error:
                self.rejected[txid] = str(error)  # told to the person as a "rejected" event
                continue
            self.rejected.pop(txid, None)
            self.txs.set_block(txid, proof.header.block_id, height)
            heights[txid] = height
        return heights

    def _prove_own_payments(self) -> None:
        """Payments this wallet sent that pay it nothing back (no change coin) are followed by proof too."""
        coin_txids = {coin.outpoint.txid for coin in self.coins}
        waiting = {stored.tx.txid for stored in self.txs.all()
                   if stored.mine and stored.tx.txid not in coin_txids and
                   (stored.block is None or self.chain.active_height(stored.block) != stored.height)}
        self._prove(waiting)

    # -- news for the person ----------------------------------------------------------------------

    def _state(self) -> dict[str, _Seen]:
        state: dict[str, _Seen] = {}
        for coin in self.coins:
            seen = state.setdefault(coin.outpoint.txid, _Seen(self._confirmations(coin.height), coin.from_self))
            seen.paid[coin.asset] = seen.paid.get(coin.asset, 0) + coin.amount
        for stored in self.txs.all():
            if stored.mine and stored.tx.txid not in state:
                height = self.chain.active_height(stored.block) if stored.block else None
                state[stored.tx.txid] = _Seen(self._confirmations(height), True)
        return state

    def _confirmations(self, height: int | None) -> int:
        return 0 if height is None else self.chain.confirmations(height)

    def _news(self) -> list[WalletEvent]:
        now = self._state()
        before, self._seen = self._seen, now
        if before is None:
            return []
        events = []
        for txid, seen in now.items():
            old = before.get(txid)
            if old is None and not seen.mine:
                paid = ", ".join(format_amount(amount, asset) for asset, amount in sorted(seen.paid.items()))
                status = "unconfirmed" if seen.confirmations == 0 else confirmations_text(seen.confirmations)
                events.append(WalletEvent("incoming", f"incoming: {paid} in tx {txid} ({status})"))
            if seen.confirmations >= 1 and (old.confirmations == 0 if old is not None else seen.mine):
                what = "your payment" if seen.mine else "tx"
                events.append(WalletEvent("confirmed", (
                    f"confirmed: {what} {txid} in block {self.chain.height - seen.confirmations + 1}, merkle proof "
                    f"checked against the wallet's headers ({confirmations_text(seen.confirmations)})")))
            if seen.confirmations >= FINAL_CONFIRMATIONS and (old is None or old.confirmations < FINAL_CONFIRMATIONS):
                if old is not None:
                    events.append(WalletEvent("final", f"final: tx {txid} is {FINAL_CONFIRMATIONS} blocks deep"))
        return events

    # -- reading -----------------------------------------------------------------------------------

    def spendable(self, coin: WalletCoin) -> bool:
        if coin.height is None:
            return coin.from_self  # our own change may be spent before it confirms, as Bitcoin Core does
        if coin.coinbase:
            return self.chain.confirmations(coin.height) >= self.network.coinbase_maturity
        return True

    def balances(self) -> list[Balance]:
        """One row per asset held, EPS first."""
        with self._lock:
            totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for coin in self.coins:
                row = totals[coin.asset]
                row["coins"] += 1
                if coin.height is None:
                    row["unconfirmed"] += coin.amount
                else:
                    row["confirmed"] += coin.amount
                    if self.chain.confirmations(coin.height) >= FINAL_CONFIRMATIONS:
                        row["final"] += coin.amount
                    if not self.spendable(coin):
                        row["immature"] += coin.amount
                if self.spendable(coin):
                    row["spendable"] += coin.amount
            assets = sorted(totals, key=lambda asset: (asset != EPS, asset))
            if EPS not in totals:
                assets.insert(0, EPS)
            return [Balance(asset, **{name: totals[asset][name] for name in
                                      ("confirmed", "final", "immature", "unconfirmed", "spendable", "coins")})
                    for asset in assets]

    def history(self) -> list[HistoryEntry]:
        with self._lock:
            return history(self.txs, set(self.addresses), self.chain.active_height)

    def token_info(self, ticker: str) -> TokenInfo:
        """What the node knows of a token (`gettoken`); WalletError when it knows none of that name."""
        (answer,) = self._ask([GetToken(ticker=ticker)])
        if not isinstance(answer, TokenInfo):
            raise WalletError(_reason(answer))
        return answer

    # -- paying -----------------------------------------------------------------------------------

    def send(self, address: str, amount_text: str, token: str | None = None) -> Sent:
        """Pay `amount_text` (EPS, or whole units of `token`) to `address`: choose, sign, send."""
        token = None if token in (None, EPS) else token
        try:
            decode_address(address, self.network.address_prefix)
        except ValueError as error:
            raise WalletError(f"{address!r} is not a {self.network.name} address: {error}") from None
        amount = parse_amount(amount_text, token)
        return self._pay([TxOut(amount, address, token)], issue=None)

    def issue(self, ticker: str, supply_text: str, name: str) -> tuple[Sent, str, str]:
        """Issue a token (token-spec): the whole supply to a new address of this wallet.

        (sent, issuer address, holder address); the issuer is the address of the coin input 0 spends.
        """
        try:
            supply = int(supply_text)
        except ValueError:
            raise WalletError(f"{supply_text!r} is not a whole number of units") from None
        try:
            issue = TokenIssue.from_json({"ticker": ticker, "name": name, "supply": supply})
        except TokenFormatError as error:
            raise WalletError(str(error)) from None
        with self._lock:
            (known,) = self._ask([GetToken(ticker=issue.ticker)])
            if isinstance(known, TokenInfo):  # the node would refuse it as invalid (and score us for it)
                raise WalletError(f"{issue.ticker} is already issued (tx {known.txid}, by {known.issuer}); "
                                  "a ticker belongs to its first issue")
            holder = self.keystore.add_key("receive").address(self.network)
            sent = self._pay([TxOut(supply, holder, issue.ticker)], issue=issue)
            return sent, sent.draft.spent[0].address, holder

    def _pay(self, outputs: list[TxOut], issue: TokenIssue | None) -> Sent:
        with self._lock:
            self._refresh()
            change_key = fresh_key("change")
            draft = build_payment([c for c in self.coins if self.spendable(c)], outputs,
                                  change_key.address(self.network), self.fee_rate, issue)
            if draft.change:
                self.keystore.keep(change_key)  # on disk before anything can pay it
            keys = self._keys()
            signed = draft.tx.signed({index: keys[coin.address].private_key for index, coin in enumerate(draft.spent)})
            (answer,) = self._ask([TxMessage(signed)])
            if not isinstance(answer, TxInfo) or answer.txid != signed.txid:
                raise WalletError(f"the node refused the payment: {_reason(answer)}")
            self.txs.put(signed, mine=True)
            self._forget_spent(signed)
            return Sent(signed.txid, draft)

    def _forget_spent(self, tx: Transaction) -> None:
        """Until the next refresh, the coins just spent are gone and the change is there."""
        spent = {txin.prevout for txin in tx.inputs}
        mine = set(self.addresses)
        self.coins = [coin for coin in self.coins if coin.outpoint not in spent] + [
            WalletCoin(OutPoint(tx.txid, index), output.address, output.amount, output.token, False, None, True)
            for index, output in enumerate(tx.outputs) if output.address in mine]


def _reason(answer: Message) -> str:
    return answer.reason if isinstance(answer, Error) else f"unexpected {answer.command}"


def confirmations_text(count: int) -> str:
    text = f"{count} confirmation{'s' if count != 1 else ''}"
    return text + ", final" if count >= FINAL_CONFIRMATIONS else text
