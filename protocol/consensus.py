"""The consensus rules: what makes a transaction or a block valid, for every node alike.

Each rule raises ConsensusError with Bitcoin Core's reject code for the same
rule (e.g. "bad-txns-inputs-missingorspent") and a sentence for people. The
checks come in Bitcoin's three layers:

- check_transaction / check_block: the object alone (CheckTransaction, CheckBlock);
- check_header_context / check_block_context: against the chain it extends
  (ContextualCheckBlockHeader, ContextualCheckBlock);
- check_inputs: against the coins it spends (Consensus::CheckTxInputs and
  the signature checks).
"""

from __future__ import annotations

import statistics
from typing import Callable, NamedTuple, Protocol, Sequence

from protocol.block import Block, BlockHeader, bits_to_target, target_to_bits
from protocol.coin_address import decode_address, pubkey_hash
from protocol.networks import Network
from protocol.tokens import MAX_TOKEN_SUPPLY
from protocol.transaction import (MAX_MONEY, MAX_TX_SIZE, OutPoint, SignatureCheck, Transaction,
                                  verify_all)

MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60  # Bitcoin's MAX_FUTURE_BLOCK_TIME: two hours
MEDIAN_TIME_SPAN = 11  # blocks in the median time past
RETARGET_CLAMP = 4  # the difficulty changes at most 4x per retarget


class ConsensusError(Exception):
    """A consensus rule is broken. `code` is Bitcoin's reject reason; str() is for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class Coin(NamedTuple):
    """An unspent output, with what the rules need to know about where it came from.
    (A named tuple for speed, as OutPoint: one is made for every output a node sees.)"""

    amount: int
    address: str
    height: int  # of the block that created it
    is_coinbase: bool
    token: str | None = None  # None: the amount is EPS


class CoinView(Protocol):
    """The unspent outputs a transaction may spend (the chain's, or the chain's plus the mempool's),
    and the tokens issued so far (a ticker belongs to its first issue)."""

    def coin(self, outpoint: OutPoint) -> Coin | None: ...

    def token_issued(self, ticker: str) -> bool: ...


# -- the transaction alone ------------------------------------------------------------------


def check_transaction(tx: Transaction, network: Network) -> None:
    if not tx.inputs:
        raise ConsensusError("bad-txns-vin-empty", "a transaction needs at least one input")
    if not tx.outputs and not tx.is_coinbase:  # a coinbase may claim nothing: no subsidy left, no fees
        raise ConsensusError("bad-txns-vout-empty", "a transaction needs at least one output")
    if tx.size > MAX_TX_SIZE:
        raise ConsensusError("bad-txns-oversize", f"transaction of {tx.size} bytes exceeds {MAX_TX_SIZE}")
    total = 0
    for output in tx.outputs:
        if output.amount <= 0:
            raise ConsensusError("bad-txns-vout-negative", "an output amount must be positive")
        if output.token is None:
            if output.amount > MAX_MONEY:
                raise ConsensusError("bad-txns-vout-toolarge", "an output amount exceeds the money supply")
            total += output.amount
            if total > MAX_MONEY:
                raise ConsensusError("bad-txns-txouttotal-toolarge",
                                     "the outputs add up to more than the money supply")
        try:
            decode_address(output.address, network.address_prefix)
        except ValueError as error:
            raise ConsensusError("bad-txns-address", f"output address {output.address!r}: {error}") from None
    check_token_fields(tx)
    if tx.is_coinbase:
        return
    spent = set()
    for txin in tx.inputs:
        if txin.is_coinbase:
            raise ConsensusError("bad-txns-prevout-null", "only a coinbase transaction has a coinbase input")
        if txin.prevout in spent:
            raise ConsensusError("bad-txns-inputs-duplicate", "the same output is spent twice")
        spent.add(txin.prevout)


def token_outputs(tx: Transaction) -> dict[str, int]:
    """Units of each token the outputs hold."""
    held: dict[str, int] = {}
    for output in tx.outputs:
        if output.token is not None:
            held[output.token] = held.get(output.token, 0) + output.amount
    return held


def check_token_fields(tx: Transaction) -> None:
    """The token parts of a transaction alone: no tokens in a coinbase, sane totals, an issue paid out whole."""
    if tx.is_coinbase:
        if tx.has_tokens:
            raise ConsensusError("bad-cb-token", "a coinbase creates EPS only: no token outputs, issue or burn")
        return
    held = token_outputs(tx)
    for ticker, units in held.items():
        if units > MAX_TOKEN_SUPPLY:
            raise ConsensusError("bad-txns-token-toolarge", f"the outputs hold more than {MAX_TOKEN_SUPPLY} {ticker}")
    if tx.issue is not None:
        ticker = tx.issue.ticker
        if held.get(ticker, 0) != tx.issue.supply:
            raise ConsensusError("bad-txns-token-issue",
                                 f"the outputs must hold exactly the issued supply {tx.issue.supply} {ticker}, "
                                 f"not {held.get(ticker, 0)}")
        if any(burn.token == ticker for burn in tx.burn):
            raise ConsensusError("bad-txns-token-issue", f"a transaction cannot burn the {ticker} it issues")


# -- the block alone ---------------------------------------------------------------------------


def check_header(header: BlockHeader, network: Network, now: float) -> None:
    """Proof of work and a sane time: checkable before the block's transactions arrive."""
    try:
        target = bits_to_target(header.bits)
    except ValueError:
        target = 0
    if not 0 < target <= bits_to_target(network.pow_limit_bits):
        raise ConsensusError("bad-diffbits", "the target is zero, negative or easier than the network allows")
    if not header.meets_target():
        raise ConsensusError("high-hash", "the block hash does not meet its target (no proof of work)")
    if header.time > now + MAX_FUTURE_BLOCK_TIME:
        raise ConsensusError("time-too-new", "the block time is more than two hours in the future")


def check_block(block: Block, network: Network, now: float) -> None:
    check_header(block.header, network, now)
    if block.size > network.max_block_size:
        raise ConsensusError("bad-blk-length", f"block of {block.size} bytes exceeds {network.max_block_size}")
    if not block.transactions or not block.transactions[0].is_coinbase:
        raise ConsensusError("bad-cb-missing", "the first transaction must be the coinbase")
    if any(tx.is_coinbase for tx in block.transactions[1:]):
        raise ConsensusError("bad-cb-multiple", "only the first transaction may be a coinbase")
    if len({tx.txid for tx in block.transactions}) != len(block.transactions):
        # Also closes CVE-2012-2459: a repeated last transaction leaves the merkle root unchanged.
        raise ConsensusError("bad-txns-duplicate", "the block contains the same transaction twice")
    if block.computed_merkle_root() != block.header.merkle_root:
        raise ConsensusError("bad-txnmrklroot", "the merkle root does not match the transactions")
    for tx in block.transactions:
        check_transaction(tx, network)


# -- against the chain --------------------------------------------------------------------------

HeaderAt = Callable[[int], BlockHeader]  # the header at a height of the chain being extended


def block_subsidy(height: int, network: Network) -> int:
    halvings = height // network.halving_interval
    return network.initial_subsidy >> halvings if halvings < 64 else 0


def median_time_past(times: Sequence[int]) -> int:
    """The median of the last (up to) 11 block times: a block must be later than this.

    With an even count (a chain shorter than 11), Bitcoin takes the upper middle value."""
    return int(statistics.median_high(times[-MEDIAN_TIME_SPAN:]))


def next_bits(network: Network, tip_height: int, header_at: HeaderAt) -> int:
    """The target bits the block after tip_height must carry (Bitcoin's GetNextWorkRequired)."""
    tip = header_at(tip_height)
    interval = network.retarget_interval
    if interval == 0:
        return network.pow_limit_bits
    if (tip_height + 1) % interval != 0:
        return tip.bits
    # As Bitcoin, the timespan covers interval - 1 gaps (its famous off-by-one, kept for fidelity).
    first = header_at(max(0, tip_height - (interval - 1)))
    goal = network.target_spacing * interval
    actual = min(max(tip.time - first.time, goal // RETARGET_CLAMP), goal * RETARGET_CLAMP)
    target = min(bits_to_target(tip.bits) * actual // goal, bits_to_target(network.pow_limit_bits))
    return target_to_bits(target)


def check_header_context(header: BlockHeader, prev_height: int, header_at: HeaderAt, network: Network) -> None:
    """The header fits on the chain at prev_height: expected difficulty, and later than the median time."""
    expected = next_bits(network, prev_height, header_at)
    if header.bits != expected:
        raise ConsensusError("bad-diffbits", f"the block's target bits {header.bits:#x} should be {expected:#x}")
    times = [header_at(h).time for h in range(max(0, prev_height - MEDIAN_TIME_SPAN + 1), prev_height + 1)]
    if header.time <= median_time_past(times):
        raise ConsensusError("time-too-old", "the block time is not after the median of the last 11 blocks")


def check_block_context(block: Block, height: int, fees: int, network: Network) -> None:
    """The coinbase names its height and claims no more than the reward plus the fees."""
    coinbase = block.transactions[0]
    if coinbase.inputs[0].coinbase_height != height:
        raise ConsensusError("bad-cb-height", f"the coinbase must carry the block height {height}")
    claimed = sum(output.amount for output in coinbase.outputs)
    allowed = block_subsidy(height, network) + fees
    if claimed > allowed:
        raise ConsensusError("bad-cb-amount", f"the coinbase claims {claimed}, more than reward plus fees {allowed}")


# -- against the coins it spends ----------------------------------------------------------------


def check_inputs(tx: Transaction, view: CoinView, spend_height: int, network: Network,
                 deferred_signatures: list[tuple[Transaction, int, SignatureCheck]] | None = None,
                 signatures_queued: bool = False) -> int:
    """The fee (inputs minus outputs), after checking every input exists, is mature, and is signed.

    With `deferred_signatures`, signatures are not verified here but appended to that
    list (a SignatureBatch, or a list for check_signatures) to verify a whole block's at once.
    With `signatures_queued`, the caller has them already (queue_signatures) and checks them.
    """
    total_in = 0
    tokens_in: dict[str, int] = {}
    for index, txin in enumerate(tx.inputs):
        coin = view.coin(txin.prevout)
        if coin is None:
            raise ConsensusError("bad-txns-inputs-missingorspent",
                                 f"input {index} spends {txin.prevout.txid}:{txin.prevout.index}, "
                                 "which does not exist or is already spent")
        if coin.is_coinbase and spend_height - coin.height < network.coinbase_maturity:
            raise ConsensusError("bad-txns-premature-spend-of-coinbase",
                                 f"input {index} spends a coinbase only {spend_height - coin.height} blocks deep "
                                 f"(needs {network.coinbase_maturity})")
        if decode_address(coin.address, network.address_prefix) != pubkey_hash(bytes.fromhex(txin.pubkey)):
            raise ConsensusError("bad-txns-wrong-key", f"input {index}: the public key is not the address's owner")
        if signatures_queued:
            pass
        elif deferred_signatures is not None:
            deferred_signatures.append((tx, index, tx.signature_check(index)))
        elif not tx.signature_valid(index):
            raise ConsensusError("bad-txns-signature", f"input {index}: the signature is not valid")
        if coin.token is not None:
            tokens_in[coin.token] = tokens_in.get(coin.token, 0) + coin.amount
            continue
        total_in += coin.amount
        if total_in > MAX_MONEY:
            raise ConsensusError("bad-txns-inputvalues-outofrange", "the inputs add up to more than the money supply")
    if tokens_in or tx.has_tokens:
        check_token_balance(tx, tokens_in, view)
    total_out = sum(output.amount for output in tx.outputs if output.token is None)
    if total_in < total_out:
        raise ConsensusError("bad-txns-in-belowout", f"outputs ({total_out}) exceed inputs ({total_in})")
    return total_in - total_out


def check_token_balance(tx: Transaction, tokens_in: dict[str, int], view: CoinView) -> None:
    """Every token is conserved: its inputs equal its outputs plus its burn, except the one issued here,
    whose ticker must be new."""
    tokens_out = token_outputs(tx)
    burned = {burn.token: burn.amount for burn in tx.burn}
    issued = tx.issue.ticker if tx.issue is not None else None
    if issued is not None:
        if view.token_issued(issued):
            raise ConsensusError("bad-txns-token-exists", f"the ticker {issued} was already issued")
        if issued in tokens_in:
            raise ConsensusError("bad-txns-token-exists", f"the inputs already hold {issued}")
    for ticker in sorted((tokens_in.keys() | tokens_out.keys() | burned.keys()) - {issued}):
        held, paid, destroyed = tokens_in.get(ticker, 0), tokens_out.get(ticker, 0), burned.get(ticker, 0)
        if held != paid + destroyed:
            raise ConsensusError("bad-txns-token-unbalanced",
                                 f"{ticker}: the inputs hold {held}, the outputs {paid} and the burn {destroyed} "
                                 "(a token is neither created nor lost except by its issue and an explicit burn)")


SIGNATURE_CHUNK = 128  # signatures per pool task: enough to make handing them over cheap


class SignatureVerdicts(Protocol):
    def result(self) -> list[bool]: ...

    def cancel(self) -> None: ...


class SignaturePool(Protocol):
    """Verifies chunks of signatures while the caller goes on (roles/signature_workers.py)."""

    def submit(self, checks: list[SignatureCheck]) -> SignatureVerdicts: ...


class SignatureBatch:
    """A block's deferred signature checks (check_inputs appends them), handed to the pool in chunks
    as they arrive: the pool verifies while the caller goes on checking the block's other inputs."""

    def __init__(self, pool: SignaturePool | None) -> None:
        self.pool = pool
        self._pending: list[tuple[Transaction, int, SignatureCheck]] = []
        self._submitted: list[tuple[list, SignatureVerdicts]] = []  # (chunk, its verdicts), in order

    def append(self, item: tuple[Transaction, int, SignatureCheck]) -> None:
        self._pending.append(item)
        if self.pool is not None and len(self._pending) >= SIGNATURE_CHUNK:
            chunk, self._pending = self._pending, []
            self._submitted.append((chunk, self.pool.submit([check for _, _, check in chunk])))

    def cancel(self) -> None:
        """The verdicts are not wanted after all (the block failed another rule first)."""
        for _, verdicts in self._submitted:
            verdicts.cancel()
        self._submitted, self._pending = [], []

    def check(self) -> None:
        """ConsensusError for the first invalid signature, in the order they were appended."""
        rest = verify_all([check for _, _, check in self._pending])  # here, while the pool finishes
        for chunk, verdicts in [(c, v.result()) for c, v in self._submitted] + [(self._pending, rest)]:
            for (tx, index, _), valid in zip(chunk, verdicts):
                if not valid:
                    raise ConsensusError("bad-txns-signature",
                                         f"transaction {tx.txid} input {index}: the signature is not valid")


def queue_signatures(block: Block, pool: SignaturePool | None) -> SignatureBatch:
    """Every input signature of the block, handed to the pool at once: it verifies them while the
    caller checks the rest of the block (check_inputs(..., signatures_queued=True))."""
    batch = SignatureBatch(pool)
    for tx in block.transactions[1:]:
        for index in range(len(tx.inputs)):
            batch.append((tx, index, tx.signature_check(index)))
    return batch


def check_signatures(checks: list[tuple[Transaction, int, SignatureCheck]], pool: SignaturePool | None) -> None:
    """Verify deferred signatures all at once: a SignatureBatch filled in one go."""
    batch = SignatureBatch(pool)
    for item in checks:
        batch.append(item)
    batch.check()
