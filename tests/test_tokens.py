"""The token layer: issue, transfer and burn, conserved per token by consensus, in the store and the mempool.

As in test_consensus.py, each negative test starts from a valid transaction,
changes the one thing a rule is about, and expects that rule's reject code.
The shop of docs/tokens.md is the cast: it issues XSHOP vouchers and pays some
to a customer, who spends or burns them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.consensus import ConsensusError, check_inputs, check_transaction
from protocol.networks import NETWORKS
from protocol.tokens import MAX_TOKEN_SUPPLY, TokenBurn, TokenIssue
from protocol.transaction import COIN, OutPoint, Transaction, TransactionFormatError
from roles.chainstore import ChainStore
from roles.mempool import Mempool, PolicyError
from tests.chain_builder import ChainBuilder, Key, make_transaction
from tests.test_consensus import rejected

REGTEST = NETWORKS["regtest"]
SHOP, CUSTOMER = Key(REGTEST, "shop"), Key(REGTEST, "customer")
FEE = 10_000
LATER = 2**32 - 1


@pytest.fixture
def chain() -> ChainBuilder:
    """A chain on which the shop has two mature coinbases of 50 EPS, at heights 1 and 2."""
    chain = ChainBuilder(REGTEST)
    chain.add_blocks(2, coinbase_to=SHOP)
    chain.add_blocks(REGTEST.coinbase_maturity)
    return chain


def issue_xshop(chain: ChainBuilder, supply: int = 1000, ticker: str = "XSHOP", coin: OutPoint | None = None,
                outputs: list | None = None) -> Transaction:
    """The shop spends its coinbase: the whole supply to itself, change in EPS."""
    coin = coin or chain.coinbase_outpoint(1)
    change = chain.amount_of(coin) - FEE
    return make_transaction(coin, outputs or [(SHOP, supply, ticker), (SHOP, change)], SHOP,
                            issue=TokenIssue(ticker, "xShop", supply))


def vouchers_to_customer(chain: ChainBuilder, issue: Transaction, units: int = 10, **fields) -> Transaction:
    """Pays `units` XSHOP of the issue's output 0 to the customer; the fee from the issue's EPS change."""
    held = issue.outputs[0].amount
    outputs = fields.pop("outputs", [(CUSTOMER, units, "XSHOP"), (SHOP, held - units, "XSHOP"),
                                     (SHOP, issue.outputs[1].amount - FEE)])
    return make_transaction([OutPoint(issue.txid, 0), OutPoint(issue.txid, 1)], outputs, SHOP, **fields)


# -- formats ----------------------------------------------------------------------------------------------


def test_a_token_transaction_round_trips_and_a_plain_one_reads_as_before(chain):
    issue = issue_xshop(chain)
    value = json.loads(issue.serialized)
    assert value["issue"] == {"ticker": "XSHOP", "name": "xShop", "supply": 1000}
    assert value["outputs"][0]["token"] == "XSHOP" and "token" not in value["outputs"][1]
    assert Transaction.from_json(value) == issue and Transaction.from_json(value).txid == issue.txid
    plain = chain.spend(chain.coinbase_outpoint(2), to=CUSTOMER, amount=COIN, fee=FEE)
    assert set(json.loads(plain.serialized)) == {"version", "inputs", "outputs", "locktime"}


@pytest.mark.parametrize("change, reason", [
    (lambda v: v["issue"].update(ticker="xshop"), "ticker"),
    (lambda v: v["issue"].update(ticker="EPS"), "ticker"),
    (lambda v: v["issue"].update(ticker="AB"), "ticker"),
    (lambda v: v["issue"].update(ticker="ABCDEFGHI"), "ticker"),
    (lambda v: v["issue"].update(name=""), "name"),
    (lambda v: v["issue"].update(name="a\nb"), "name"),
    (lambda v: v["issue"].update(name="x" * 41), "name"),
    (lambda v: v["issue"].update(supply=0), "supply"),
    (lambda v: v["issue"].update(supply=MAX_TOKEN_SUPPLY + 1), "supply"),
    (lambda v: v["issue"].update(supply=10.0), "supply"),
    (lambda v: v.update(issue=None), "issue"),
    (lambda v: v.update(issue=[]), "issue"),
    (lambda v: v["outputs"][0].update(token=None), "ticker"),
    (lambda v: v["outputs"][0].update(token="X"), "ticker"),
    (lambda v: v.update(burn=[]), "burn"),
    (lambda v: v.update(burn=[{"token": "XSHOP", "amount": 1}] * 2), "once"),
    (lambda v: v.update(burn=[{"token": "XSHOP", "amount": 0}]), "burn amount"),
    (lambda v: v.update(burn=[{"token": "XSHOP", "amount": 1}] * 17), "burn"),
    (lambda v: v.update(burn={"token": "XSHOP"}), "burn"),
])
def test_malformed_token_fields_are_format_errors(chain, change, reason):
    value = json.loads(issue_xshop(chain).serialized)
    change(value)
    with pytest.raises(TransactionFormatError, match=reason):
        Transaction.from_json(value)


@settings(max_examples=300, deadline=None)
@given(issue=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              st.sampled_from(["ticker", "name", "supply", "token", "amount"]), inner, max_size=4),
                          max_leaves=8),
       burn=st.lists(st.dictionaries(st.sampled_from(["token", "amount"]),
                                     st.integers() | st.text(max_size=9), max_size=2), max_size=3))
def test_the_token_parsers_answer_any_json_with_a_transaction_or_a_format_error(issue, burn):
    value = {"version": 1, "locktime": 0, "inputs": [{"coinbase": 1, "data": ""}],
             "outputs": [{"amount": 1, "address": SHOP.address, "token": "XSHOP"}], "issue": issue, "burn": burn}
    try:
        parsed = Transaction.from_json(value)
    except TransactionFormatError:
        return
    assert Transaction.from_json(json.loads(parsed.serialized)) == parsed


# -- the transaction alone ----------------------------------------------------------------------------------


def test_a_coinbase_creates_eps_only(chain):
    coinbase = chain.coinbase(to=SHOP)
    check_transaction(coinbase, REGTEST)
    with_token = Transaction(inputs=coinbase.inputs, outputs=(coinbase.outputs[0].__class__(5, SHOP.address, "XSHOP"),))
    rejected("bad-cb-token", check_transaction, with_token, REGTEST)


def test_an_issue_must_pay_out_exactly_its_supply(chain):
    check_transaction(issue_xshop(chain), REGTEST)
    change = chain.amount_of(chain.coinbase_outpoint(1)) - FEE
    short = issue_xshop(chain, outputs=[(SHOP, 999, "XSHOP"), (SHOP, change)])
    rejected("bad-txns-token-issue", check_transaction, short, REGTEST, match="exactly the issued supply")
    split = issue_xshop(chain, outputs=[(SHOP, 600, "XSHOP"), (CUSTOMER, 400, "XSHOP"), (SHOP, change)])
    check_transaction(split, REGTEST)


def test_an_issue_cannot_burn_its_own_token(chain):
    issue = issue_xshop(chain)
    both = make_transaction(chain.coinbase_outpoint(1), [(SHOP, 1000, "XSHOP")], SHOP,
                            issue=issue.issue, burn=[TokenBurn("XSHOP", 1)])
    rejected("bad-txns-token-issue", check_transaction, both, REGTEST)


def test_token_outputs_add_up_to_at_most_the_largest_supply(chain):
    huge = make_transaction(chain.coinbase_outpoint(1), [(SHOP, MAX_TOKEN_SUPPLY, "XSHOP"), (SHOP, 1, "XSHOP")], SHOP)
    rejected("bad-txns-token-toolarge", check_transaction, huge, REGTEST)


def test_token_units_are_not_money_so_a_huge_token_output_is_no_eps_overflow(chain):
    many = make_transaction(chain.coinbase_outpoint(1), [(SHOP, MAX_TOKEN_SUPPLY, "XSHOP")], SHOP,
                            issue=TokenIssue("XSHOP", "xShop", MAX_TOKEN_SUPPLY))
    check_transaction(many, REGTEST)  # 2^53-1 units exceed MAX_MONEY in base units, and that is fine


# -- against the coins it spends --------------------------------------------------------------------------


def test_an_issue_is_valid_and_its_fee_is_eps(chain):
    issue = issue_xshop(chain)
    assert check_inputs(issue, chain.view, chain.height + 1, REGTEST) == FEE


def test_the_first_issue_of_a_ticker_owns_it(chain):
    chain.add_block([issue_xshop(chain)])
    again = issue_xshop(chain, coin=chain.coinbase_outpoint(2))
    rejected("bad-txns-token-exists", check_inputs, again, chain.view, chain.height + 1, REGTEST,
             match="already issued")
    other = issue_xshop(chain, ticker="XSHOP2", coin=chain.coinbase_outpoint(2))
    assert check_inputs(other, chain.view, chain.height + 1, REGTEST) == FEE


def test_two_issues_of_one_ticker_in_one_block_are_rejected(chain):
    first, second = issue_xshop(chain), issue_xshop(chain, coin=chain.coinbase_outpoint(2))
    block = chain.make_block([first, second])
    rejected("bad-txns-token-exists", chain.validate, block)


def test_a_transfer_conserves_the_token(chain):
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    payment = vouchers_to_customer(chain, issue)
    assert check_inputs(payment, chain.view, chain.height + 1, REGTEST) == FEE
    chain.add_block([payment])
    assert {c.amount for op, c in chain.view.coins_of(CUSTOMER).items() if c.token == "XSHOP"} == {10}


def test_creating_token_units_out_of_nothing_is_rejected(chain):
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    inflated = vouchers_to_customer(chain, issue, outputs=[(CUSTOMER, 10, "XSHOP"), (SHOP, 991, "XSHOP"),
                                                           (SHOP, issue.outputs[1].amount - FEE)])
    rejected("bad-txns-token-unbalanced", check_inputs, inflated, chain.view, chain.height + 1, REGTEST,
             match="XSHOP: the inputs hold 1000, the outputs 1001")


def test_losing_token_units_without_a_burn_is_rejected_and_with_one_is_valid(chain):
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    outputs = [(CUSTOMER, 10, "XSHOP"), (SHOP, 985, "XSHOP"), (SHOP, issue.outputs[1].amount - FEE)]
    lossy = vouchers_to_customer(chain, issue, outputs=outputs)
    rejected("bad-txns-token-unbalanced", check_inputs, lossy, chain.view, chain.height + 1, REGTEST)
    burned = vouchers_to_customer(chain, issue, outputs=outputs, burn=[TokenBurn("XSHOP", 5)])
    assert check_inputs(burned, chain.view, chain.height + 1, REGTEST) == FEE


def test_burning_a_token_the_inputs_do_not_hold_is_rejected(chain):
    burn = make_transaction(chain.coinbase_outpoint(1), [(SHOP, chain.amount_of(chain.coinbase_outpoint(1)) - FEE)],
                            SHOP, burn=[TokenBurn("XSHOP", 1)])
    rejected("bad-txns-token-unbalanced", check_inputs, burn, chain.view, chain.height + 1, REGTEST)


def test_paying_a_token_one_does_not_hold_is_rejected_even_before_any_issue(chain):
    forged = make_transaction(chain.coinbase_outpoint(1), [(CUSTOMER, 10, "XSHOP"),
                                                           (SHOP, chain.amount_of(chain.coinbase_outpoint(1)) - FEE)],
                              SHOP)
    rejected("bad-txns-token-unbalanced", check_inputs, forged, chain.view, chain.height + 1, REGTEST)


def test_token_units_pay_no_fee_and_count_for_no_eps(chain):
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    tokens_only = make_transaction(OutPoint(issue.txid, 0), [(CUSTOMER, 1000, "XSHOP")], SHOP)
    assert check_inputs(tokens_only, chain.view, chain.height + 1, REGTEST) == 0  # valid, but pays nothing
    eps_from_tokens = make_transaction(OutPoint(issue.txid, 0), [(CUSTOMER, 1000, "XSHOP"), (CUSTOMER, 1)], SHOP)
    rejected("bad-txns-in-belowout", check_inputs, eps_from_tokens, chain.view, chain.height + 1, REGTEST)


def test_a_token_spent_with_the_wrong_key_is_rejected(chain):
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    theft = make_transaction([OutPoint(issue.txid, 0), OutPoint(issue.txid, 1)],
                             [(CUSTOMER, 1000, "XSHOP"), (CUSTOMER, issue.outputs[1].amount - FEE)], CUSTOMER)
    rejected("bad-txns-wrong-key", check_inputs, theft, chain.view, chain.height + 1, REGTEST)


# -- the store ------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    store = ChainStore(tmp_path / "chain.sqlite", REGTEST)
    yield store
    store.close()


def give(store: ChainStore, chain: ChainBuilder, start: int = 1) -> None:
    for height in range(start, chain.height + 1):
        block = chain.block_at(height)
        store.add_header(block.header, now=LATER)
        store.store_block(block)
    change = store.activate_best_chain()
    assert not change.invalid, change.invalid


def test_the_store_records_the_issue_holders_and_burns_and_a_reorg_undoes_them(store, chain):
    base = chain.height
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    give(store, chain)
    token = store.token("XSHOP")
    assert (token.supply, token.burned, token.issuer, token.txid, token.holders) == (1000, 0, SHOP.address,
                                                                                      issue.txid, 1)
    assert store.token_issued("XSHOP") and store.token("NOPE") is None
    payment = vouchers_to_customer(chain, issue, outputs=[(CUSTOMER, 10, "XSHOP"), (SHOP, 985, "XSHOP"),
                                                          (SHOP, issue.outputs[1].amount - FEE)],
                                   burn=[TokenBurn("XSHOP", 5)])
    chain.add_block([payment])
    give(store, chain, start=chain.height)
    token = store.token("XSHOP")
    assert (token.burned, token.circulating, token.holders) == (5, 995, 2)
    assert store.coin(OutPoint(payment.txid, 0)).token == "XSHOP"
    assert store.utxo_matches_replay()

    rival = chain.fork(base)  # a longer branch without the issue takes over
    rival.add_blocks(3)
    give(store, rival, start=base + 1)
    assert store.tip().block_id == rival.tip.block_id
    assert store.token("XSHOP") is None and not store.token_issued("XSHOP")
    assert store.utxo_matches_replay()


def test_a_store_made_before_tokens_gains_the_token_column(tmp_path: Path, chain):
    import sqlite3
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE utxo (txid TEXT NOT NULL, idx INTEGER NOT NULL, amount INTEGER NOT NULL, "
                "address TEXT NOT NULL, height INTEGER NOT NULL, coinbase INTEGER NOT NULL, "
                "PRIMARY KEY (txid, idx)) WITHOUT ROWID")
    old.close()
    store = ChainStore(path, REGTEST)
    try:
        give(store, chain)
        assert store.utxo_matches_replay() and store.coin(chain.coinbase_outpoint(1)).token is None
    finally:
        store.close()


# -- the mempool ---------------------------------------------------------------------------------------------


def test_the_mempool_keeps_one_issue_per_ticker_until_a_block_takes_it(store, chain):
    give(store, chain)
    pool = Mempool(REGTEST)
    first, second = issue_xshop(chain), issue_xshop(chain, coin=chain.coinbase_outpoint(2))
    pool.accept(first, store, store.height)
    with pytest.raises(PolicyError, match="already being issued"):
        pool.accept(second, store, store.height)
    block = chain.add_block([second])  # a miner elsewhere confirmed the other issue
    give(store, chain, start=chain.height)
    assert first.txid in pool.remove_for_block(block)
    assert len(pool) == 0
    with pytest.raises(ConsensusError, match="bad-txns-token-exists"):
        pool.accept(first, store, store.height)


def test_the_mempool_accepts_a_transfer_of_a_waiting_issue(store, chain):
    give(store, chain)
    pool = Mempool(REGTEST)
    issue = issue_xshop(chain)
    pool.accept(issue, store, store.height)
    payment = vouchers_to_customer(chain, issue)
    assert pool.accept(payment, store, store.height).fee == FEE
    inflated = vouchers_to_customer(chain, issue, outputs=[(CUSTOMER, 1000, "XSHOP"), (SHOP, 1, "XSHOP"),
                                                           (SHOP, issue.outputs[1].amount - 2 * FEE)])
    with pytest.raises(PolicyError):  # spends what the payment spends: a conflict before any balance
        pool.accept(inflated, store, store.height)


# -- on the wire ---------------------------------------------------------------------------------------------


def test_a_node_answers_gettoken_and_lists_token_coins_in_utxos(start_node, chain):
    from protocol.messages import Error, TokenInfo
    from tests.test_wallet_services import fed_node, utxos
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    chain.add_block([vouchers_to_customer(chain, issue)])
    node, client = fed_node(start_node, chain)
    with client:
        client.send('gettoken {"ticker":"XSHOP"}')
        token = client.recv_until("token")
        assert isinstance(token, TokenInfo)
        assert (token.name, token.supply, token.burned, token.issuer, token.holders, token.height) == (
            "xShop", 1000, 0, SHOP.address, 2, chain.height - 1)
        rows = utxos(client, CUSTOMER.address).utxos
        assert [(row.amount, row.token) for row in rows] == [(10, "XSHOP")]
        assert {row.token for row in utxos(client, SHOP.address).utxos} == {"XSHOP", None}
        client.send('gettoken {"ticker":"NOPE"}')
        unknown = client.recv_until("error")
        assert isinstance(unknown, Error) and "no token NOPE" in unknown.reason
        client.send('gettoken {"ticker":"xshop"}')
        assert "invalid format" in client.recv_until("error").reason


def test_a_node_refuses_token_inflation_and_a_double_spend_with_a_reason(start_node, chain):
    """What a wallet never builds but anyone can send, each refused with an `error` that says why."""
    from protocol.messages import Error, TxMessage
    from tests.test_wallet_services import fed_node
    issue = chain.add_block([issue_xshop(chain)]).transactions[1]
    node, client = fed_node(start_node, chain)
    with node.connect() as cheat:
        cheat.handshake()
        inflated = vouchers_to_customer(chain, issue, outputs=[(CUSTOMER, 10, "XSHOP"), (SHOP, 991, "XSHOP"),
                                                               (SHOP, issue.outputs[1].amount - FEE)])
        cheat.send_message(TxMessage(inflated))
        refusal = cheat.recv_until("error")
        assert isinstance(refusal, Error) and "bad-txns-token-unbalanced" in refusal.reason
        assert "XSHOP: the inputs hold 1000, the outputs 1001" in refusal.reason
        cheat.expect_closed()  # invalid by consensus: 100 points (127.0.0.1 is never banned, only dropped)

    with client:
        payment = vouchers_to_customer(chain, issue)
        client.send_message(TxMessage(payment))
        assert client.recv_until("txinfo").txid == payment.txid
        double = vouchers_to_customer(chain, issue, units=20)  # the same coins, to someone else
        client.send_message(TxMessage(double))
        refusal = client.recv_until("error")
        assert isinstance(refusal, Error) and "txn-mempool-conflict" in refusal.reason
        client.sync_ping()  # a race an honest sender can lose: no penalty, the connection stays
