"""Build valid chains in-process, for tests: keys, mining, coinbases, signed spends, a UTXO view.

    chain = ChainBuilder(NETWORKS["regtest"])        # genesis only; chain.miner gets the rewards
    alice, bob = chain.key("alice"), chain.key("bob")
    chain.add_blocks(6, coinbase_to=alice)            # heights 1..6: the coinbase at 1 is now mature
    tx = chain.spend(chain.coinbase_outpoint(1), to=bob, amount=10 * COIN, fee=1_000, key=alice)
    block = chain.add_block([tx])                     # checked by every consensus rule, then applied
    chain.view.coin(OutPoint(tx.txid, 0))             # Coin(amount=10 * COIN, address=bob.address, ...)

Everything is deterministic: the same calls build the same blocks, byte for
byte (keys come from seeds, times from the chain, nonces from counting up).

Nothing here is a consensus rule. The rules are protocol.consensus; the
builder only makes blocks that satisfy them, and `ChainBuilder.validate`
runs them all, in Bitcoin's order, against the chain being extended. To make
an invalid block, build it with `make_block` / `assemble` (they never check)
and change what the test is about: every other part stays valid.

Regtest's proof of work is trivial (about two hashes a block), so a chain of
hundreds of blocks builds in well under a second. The demo and main networks
work too, but each block costs ~65,000 hashes there (about a tenth of a second).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from typing import Iterable, Sequence, Union

import coincurve

from protocol.block import Block, BlockHeader, bits_to_target
from protocol.coin_address import encode_address, pubkey_hash
from protocol.consensus import (Coin, block_subsidy, check_block, check_block_context, check_header_context,
                                check_inputs, median_time_past, next_bits)
from protocol.hashing import merkle_root
from protocol.networks import NETWORKS, Network
from protocol.tokens import TokenBurn, TokenIssue
from protocol.transaction import OutPoint, Transaction, TxIn, TxOut, coinbase_transaction

REGTEST = NETWORKS["regtest"]
CLOCK_AHEAD = 60  # ChainBuilder.now: the wall clock a minute after the tip's time


# -- keys ----------------------------------------------------------------------------------------


class Key:
    """A secp256k1 private key and its address on one network; the same seed gives the same key."""

    def __init__(self, network: Network = REGTEST, seed: str | None = None) -> None:
        secret = None if seed is None else hashlib.sha256(b"epscoin test key:" + seed.encode()).digest()
        self.seed = seed
        self.network = network
        self.private = coincurve.PrivateKey(secret)  # None: a fresh random key
        self.pubkey: bytes = self.private.public_key.format()  # 33 bytes, compressed
        self.pubkey_hex = self.pubkey.hex()
        self.address = encode_address(network.address_prefix, pubkey_hash(self.pubkey))

    def __repr__(self) -> str:
        return f"Key({self.seed!r}, {self.address})"


Payee = Union[Key, str]  # whom to pay: a key (its address) or an address


def address_of(payee: Payee) -> str:
    return payee.address if isinstance(payee, Key) else payee


Output = Union[tuple[Payee, int], tuple[Payee, int, str]]  # (payee, EPS base units) or (payee, units, TICKER)


def make_transaction(outpoints: OutPoint | Sequence[OutPoint], outputs: Iterable[Output],
                     keys: Key | Sequence[Key] | None, issue: TokenIssue | None = None,
                     burn: Sequence[TokenBurn] = ()) -> Transaction:
    """A transaction spending `outpoints` to (payee, amount) pairs, signed input by input.

    An output given as (payee, units, "XSHOP") carries a token; `issue` and
    `burn` are the token fields (protocol/tokens.py). `keys` is one key for
    every input, or one per input; None leaves the inputs unsigned (and without
    pubkeys). No coin is looked up: the result may spend anything, which is
    what tests of missing coins need.
    """
    outpoints = [outpoints] if isinstance(outpoints, OutPoint) else list(outpoints)
    tx = Transaction(inputs=tuple(TxIn(prevout=outpoint) for outpoint in outpoints),
                     outputs=tuple(TxOut(output[1], address_of(output[0]), *output[2:]) for output in outputs),
                     issue=issue, burn=tuple(burn))
    if keys is None:
        return tx
    keys = [keys] * len(outpoints) if isinstance(keys, Key) else list(keys)
    if len(keys) != len(outpoints):
        raise ValueError(f"{len(keys)} keys for {len(outpoints)} inputs")
    return tx.signed({index: key.private for index, key in enumerate(keys)})


# -- proof of work ---------------------------------------------------------------------------------


def _hashes(header: BlockHeader) -> Iterable[tuple[int, int]]:
    """(nonce, hash value) from header.nonce upwards; the 76-byte prefix is hashed once (the midstate)."""
    midstate = hashlib.sha256(header.serialize()[:76])
    for nonce in range(header.nonce, 2**32):
        inner = midstate.copy()
        inner.update(struct.pack("<I", nonce))
        yield nonce, int.from_bytes(hashlib.sha256(inner.digest()).digest(), "big")


def mine(header: BlockHeader) -> BlockHeader:
    """The header with the first nonce from header.nonce on whose hash meets its target."""
    target = bits_to_target(header.bits)
    for nonce, value in _hashes(header):
        if value <= target:
            mined = replace(header, nonce=nonce)
            assert mined.meets_target()
            return mined
    raise ValueError("no nonce meets the target: change the time or the merkle root")


def unmine(header: BlockHeader) -> BlockHeader:
    """The header with the first nonce whose hash misses its target: a block without proof of work."""
    target = bits_to_target(header.bits)
    for nonce, value in _hashes(header):
        if value > target:
            return replace(header, nonce=nonce)
    raise ValueError("every nonce meets this target")


# -- coins -----------------------------------------------------------------------------------------


class UtxoView:
    """The unspent outputs, in a dict: a protocol.consensus.CoinView that blocks can be applied to."""

    def __init__(self, coins: dict[OutPoint, Coin] | None = None, tickers: set[str] | None = None) -> None:
        self.coins: dict[OutPoint, Coin] = dict(coins or {})
        self.tickers: set[str] = set(tickers or ())  # tokens issued so far

    def coin(self, outpoint: OutPoint) -> Coin | None:
        return self.coins.get(outpoint)

    def token_issued(self, ticker: str) -> bool:
        return ticker in self.tickers

    def copy(self) -> "UtxoView":
        return UtxoView(self.coins, self.tickers)

    def add_transaction(self, tx: Transaction, height: int) -> None:
        """Spend tx's inputs and add its outputs. Checks nothing: run check_inputs first."""
        if not tx.is_coinbase:
            for txin in tx.inputs:
                self.coins.pop(txin.prevout, None)
        for index, output in enumerate(tx.outputs):
            self.coins[OutPoint(tx.txid, index)] = Coin(output.amount, output.address, height, tx.is_coinbase,
                                                        output.token)
        if tx.issue is not None:
            self.tickers.add(tx.issue.ticker)

    def add_block(self, block: Block, height: int) -> None:
        for tx in block.transactions:
            self.add_transaction(tx, height)

    def coins_of(self, payee: Payee) -> dict[OutPoint, Coin]:
        address = address_of(payee)
        return {outpoint: coin for outpoint, coin in self.coins.items() if coin.address == address}

    def total(self) -> int:
        """EPS in the set (token units are not money)."""
        return sum(coin.amount for coin in self.coins.values() if coin.token is None)

    def __len__(self) -> int:
        return len(self.coins)

    def __contains__(self, outpoint: object) -> bool:
        return outpoint in self.coins


# -- the chain -------------------------------------------------------------------------------------


class ChainBuilder:
    """A chain from the network's genesis block, its UTXO view, and the means to extend both.

    As in Bitcoin, the genesis block's coinbase is not in the view (nobody can
    spend it anyway: it pays the all-zero key hash).
    """

    def __init__(self, network: Network = REGTEST, miner: Key | None = None, coinbase_data: str = "") -> None:
        self.network = network
        self.miner = miner or Key(network, "miner")  # where rewards go unless coinbase_to says otherwise
        self.coinbase_data = coinbase_data  # written into every coinbase: chains that differ only here differ
        self.blocks: list[Block] = [network.genesis]
        self.view = UtxoView()
        self._unconfirmed: dict[str, Transaction] = {}  # made by spend(), not yet in a block

    # the chain so far

    @property
    def tip(self) -> Block:
        return self.blocks[-1]

    @property
    def height(self) -> int:
        """The tip's height (genesis is 0)."""
        return len(self.blocks) - 1

    def block_at(self, height: int) -> Block:
        if not 0 <= height < len(self.blocks):
            raise IndexError(f"no block at height {height} (the tip is at {self.height})")
        return self.blocks[height]

    def header_at(self, height: int) -> BlockHeader:
        """The consensus functions' HeaderAt for this chain."""
        return self.block_at(height).header

    @property
    def now(self) -> int:
        """The wall clock the builder validates with: CLOCK_AHEAD seconds after the tip's time."""
        return self.tip.header.time + CLOCK_AHEAD

    def median_time_past(self) -> int:
        """A block on the tip must be later than this."""
        return median_time_past([block.header.time for block in self.blocks])

    def next_bits(self) -> int:
        return next_bits(self.network, self.height, self.header_at)

    def key(self, seed: str) -> Key:
        return Key(self.network, seed)

    def coinbase_outpoint(self, height: int, index: int = 0) -> OutPoint:
        """Output `index` of the coinbase of the block at `height`."""
        return OutPoint(self.block_at(height).transactions[0].txid, index)

    # transactions

    def amount_of(self, outpoint: OutPoint) -> int:
        """The amount an outpoint holds, in the view or among spend()'s unconfirmed transactions."""
        coin = self.view.coin(outpoint)
        if coin is not None:
            return coin.amount
        tx = self._unconfirmed.get(outpoint.txid)
        if tx is not None and outpoint.index < len(tx.outputs):
            return tx.outputs[outpoint.index].amount
        raise LookupError(f"{outpoint} is not an unspent output; use make_transaction to spend it anyway")

    def spend(self, outpoints: OutPoint | Sequence[OutPoint], to: Payee, amount: int, fee: int = 0,
              key: Key | Sequence[Key] | None = None, change_to: Payee | None = None) -> Transaction:
        """A signed transaction paying `amount` to `to` (output 0) and leaving `fee` to the miner.

        The rest, if any, is change (output 1) to `change_to`, by default the
        (first) key's address. `key` signs every input, or give one key per
        input; by default the miner's key. The outpoints may be unspent coins
        of the view or outputs of earlier spend() results not yet in a block,
        so one block can hold a chain of transactions.
        """
        outpoints = [outpoints] if isinstance(outpoints, OutPoint) else list(outpoints)
        key = key or self.miner
        change = sum(self.amount_of(outpoint) for outpoint in outpoints) - amount - fee
        if change < 0:
            raise ValueError(f"the coins are {-change} short of amount plus fee")
        outputs = [(to, amount)]
        if change:
            first_key = key if isinstance(key, Key) else key[0]
            outputs.append((change_to or first_key, change))
        tx = make_transaction(outpoints, outputs, key)
        self._unconfirmed[tx.txid] = tx
        return tx

    def fees_of(self, txs: Sequence[Transaction]) -> int:
        """Inputs minus outputs of these transactions, in order (a later one may spend an earlier one's)."""
        if not txs:
            return 0
        view, fees = self.view.copy(), 0
        for tx in txs:
            coins = [view.coin(txin.prevout) for txin in tx.inputs]
            if None in coins:
                raise LookupError(f"transaction {tx.txid} spends an unknown coin: pass fees= explicitly")
            fees += sum(coin.amount for coin in coins if coin.token is None) - \
                sum(output.amount for output in tx.outputs if output.token is None)  # fees are EPS only
            view.add_transaction(tx, self.height + 1)
        return fees

    def coinbase(self, height: int | None = None, to: Payee | None = None, fees: int = 0,
                 amount: int | None = None, data: str | None = None) -> Transaction:
        """The coinbase for a block at `height` (default: the next), claiming subsidy + fees."""
        height = self.height + 1 if height is None else height
        if amount is None:
            amount = block_subsidy(height, self.network) + fees
        data = self.coinbase_data if data is None else data
        return coinbase_transaction(height, (TxOut(amount, address_of(to or self.miner)),), data)

    # blocks

    def assemble(self, transactions: Sequence[Transaction], *, time: int | None = None, bits: int | None = None,
                 merkle_root_hex: str | None = None, version: int = 1, prev: str | None = None) -> Block:
        """A mined block on the tip with exactly these transactions (no coinbase is added). Checks nothing.

        Defaults: a time one second after the tip (and after the median time
        past), the bits next_bits requires, the transactions' merkle root.
        """
        if time is None:
            time = max(self.tip.header.time, self.median_time_past()) + 1
        if merkle_root_hex is None:
            merkle_root_hex = merkle_root([bytes.fromhex(tx.txid) for tx in transactions]).hex()
        header = BlockHeader(version=version, prev=self.tip.block_id if prev is None else prev,
                             merkle_root=merkle_root_hex, time=time,
                             bits=self.next_bits() if bits is None else bits, nonce=0)
        return Block(header=mine(header), transactions=tuple(transactions))

    def make_block(self, txs: Sequence[Transaction] = (), *, time: int | None = None,
                   coinbase_to: Payee | None = None, fees: int | None = None, extra_reward: int = 0,
                   coinbase: Transaction | None = None, **header_fields) -> Block:
        """A mined block on the tip: a coinbase claiming subsidy + fees + extra_reward, then `txs`.

        `fees` defaults to what `txs` pay (their coins must be known; pass it for
        transactions that spend nothing real). `coinbase` replaces the coinbase
        altogether. `time` and header_fields go to `assemble` (bits,
        merkle_root_hex, version, prev). Checks nothing: see add_block.
        """
        if coinbase is None:
            if fees is None:
                fees = self.fees_of(txs)
            coinbase = self.coinbase(to=coinbase_to, fees=fees + extra_reward)
        return self.assemble([coinbase, *txs], time=time, **header_fields)

    def validate(self, block: Block, now: float | None = None) -> int:
        """Every consensus rule for `block` on the tip, in Bitcoin's order; the fees it collects."""
        height = self.height + 1
        if block.header.prev != self.tip.block_id:
            raise ValueError(f"block {block.block_id} does not extend the tip {self.tip.block_id}")
        check_block(block, self.network, self.now if now is None else now)
        check_header_context(block.header, self.height, self.header_at, self.network)
        fees = 0
        if len(block.transactions) > 1:  # (copying the view only when there is something to spend)
            view = self.view.copy()
            view.add_transaction(block.transactions[0], height)
            for tx in block.transactions[1:]:
                fees += check_inputs(tx, view, height, self.network)
                view.add_transaction(tx, height)
        check_block_context(block, height, fees, self.network)
        return fees

    def append(self, block: Block, validate: bool = True) -> Block:
        """Make `block` (built by make_block or assemble, maybe modified) the new tip and apply it to the view."""
        if validate:
            self.validate(block)
        self.blocks.append(block)
        self.view.add_block(block, self.height)
        for tx in block.transactions:
            self._unconfirmed.pop(tx.txid, None)
        return block

    def add_block(self, txs: Sequence[Transaction] = (), *, validate: bool = True, **options) -> Block:
        """make_block(txs, **options), checked by validate() (unless validate=False), as the new tip."""
        return self.append(self.make_block(txs, **options), validate=validate)

    def add_blocks(self, count: int, **options) -> list[Block]:
        """`count` blocks without transactions, each a second after the last (options as add_block, but a
        fixed `time` would make the second block too old)."""
        return [self.add_block(**options) for _ in range(count)]

    def fork(self, height: int, coinbase_data: str = "fork") -> "ChainBuilder":
        """A builder for a competing chain: this chain's blocks up to `height`, then its own.

        Its coinbases carry `coinbase_data`, so its blocks differ from this
        chain's even when built with the same calls.
        """
        other = ChainBuilder(self.network, miner=self.miner, coinbase_data=coinbase_data)
        for block in self.blocks[1:height + 1]:
            other.append(block, validate=False)
        return other
