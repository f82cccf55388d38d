"""The light wallet: coin selection checked by the consensus rules, the SPV header chain and proof check,
and end to end on regtest: a real miner pays a wallet, which pays another, seen unconfirmed then confirmed
with a checked merkle proof; a forged proof is refused; tokens are issued and sent; errors are one line."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.block import BlockHeader
from protocol.consensus import ConsensusError, check_inputs, check_transaction
from protocol.framing import FrameReader, encode_frame
from protocol.hashing import merkle_branch
from protocol.messages import Error, Proof, TxInfo, decode_message
from protocol.networks import NETWORKS
from protocol.tokens import TokenIssue
from protocol.transaction import COIN, MAX_MONEY, OutPoint, Transaction, TxIn, TxOut
from roles.wallet.coins import (DUST, InsufficientFunds, WalletCoin, WalletError, build_payment, fee_for,
                                format_amount, parse_amount)
from roles.wallet.spv import HeaderChain, ProofError, open_data, verify_proof
from tests.chain_builder import ChainBuilder, Key, UtxoView, make_transaction, mine, unmine
from tests.conftest import ISOLATED
from tests.support import ROOT, NodeProcess, wait_until
from tests.test_peer_client import Terminal

REGTEST = NETWORKS["regtest"]
KEYS = [Key(REGTEST, f"wallet-test-{i}") for i in range(3)]
PAYEE, CHANGE = Key(REGTEST, "payee"), Key(REGTEST, "change")
BY_ADDRESS = {key.address: key for key in KEYS}


# -- amounts ---------------------------------------------------------------------------------------


def test_amounts_are_parsed_exactly_and_refused_with_a_reason():
    assert parse_amount("12.5", None) == 1_250_000_000
    assert parse_amount("0.00000001", None) == 1
    assert parse_amount("1e3", None) == 1000 * COIN
    assert parse_amount("250", "XSHOP") == 250
    for text, token, reason in [("0.000000001", None, "at most 8 decimals"), ("-1", None, "positive"),
                                ("abc", None, "not an amount"), ("NaN", None, "positive"),
                                ("21000001", None, "money supply"), ("2.5", "XSHOP", "whole units")]:
        with pytest.raises(WalletError, match=reason):
            parse_amount(text, token)
    assert format_amount(1_250_000_000) == "12.50000000 EPS" and format_amount(-1) == "-0.00000001 EPS"
    assert format_amount(7, "XSHOP") == "7 XSHOP"


# -- coin selection, checked by the consensus rules -----------------------------------------------------


def wallet_coins(amounts: list[int], token: str | None = None, start: int = 0) -> list[WalletCoin]:
    return [WalletCoin(OutPoint(f"{start + i:064x}", 0), KEYS[i % len(KEYS)].address, amount, token, False, 1)
            for i, amount in enumerate(amounts)]


def view_of(coins: list[WalletCoin], tickers: set[str] = frozenset()) -> UtxoView:
    from protocol.consensus import Coin
    return UtxoView({c.outpoint: Coin(c.amount, c.address, 1, False, c.token) for c in coins}, set(tickers))


def sign(tx: Transaction, spent) -> Transaction:
    return tx.signed({index: BY_ADDRESS[coin.address].private for index, coin in enumerate(spent)})


@settings(max_examples=80, deadline=None)
@given(amounts=st.lists(st.integers(min_value=1, max_value=50 * COIN), min_size=1, max_size=10),
       pay=st.integers(min_value=1, max_value=120 * COIN), fee_rate=st.integers(min_value=1, max_value=5))
def test_a_payment_covers_amount_and_fee_and_passes_every_consensus_rule(amounts, pay, fee_rate):
    coins = wallet_coins(amounts)
    payment = [TxOut(pay, PAYEE.address)]
    try:
        draft = build_payment(coins, payment, CHANGE.address, fee_rate)
    except InsufficientFunds:
        everything = Transaction(tuple(TxIn(c.outpoint) for c in coins),
                                 (payment[0], TxOut(MAX_MONEY, CHANGE.address)))
        assert sum(amounts) < pay + fee_for(everything, fee_rate)
        return
    signed = sign(draft.tx, draft.spent)
    check_transaction(signed, REGTEST)
    fee = check_inputs(signed, view_of(coins), 10, REGTEST)  # signatures, ownership, inputs >= outputs
    assert fee == draft.fee and fee >= fee_rate * signed.size  # the estimate never undercuts the rate
    assert signed.outputs[0] == payment[0]
    change = signed.outputs[1:]
    assert all(out.amount >= DUST and out.address == CHANGE.address for out in change)
    if not change:  # what would have been change was crumbs (below DUST), not a lost coin
        priced = replace(draft.tx, outputs=draft.tx.outputs + (TxOut(MAX_MONEY, CHANGE.address),))
        assert fee < fee_for(priced, fee_rate) + DUST
    singles = [c for c in coins if c.amount >= pay + fee_for(Transaction((TxIn(c.outpoint),), (
        payment[0], TxOut(MAX_MONEY, CHANGE.address))), fee_rate)]
    if singles:  # the smallest coin that covers it all alone, so big coins stay whole
        assert [coin.outpoint for coin in draft.spent] == [min(singles, key=lambda c: (c.amount, c.outpoint)).outpoint]


def test_a_token_issue_and_a_token_payment_conserve_every_token_and_pay_fees_in_eps():
    eps = wallet_coins([3 * COIN, 1 * COIN])
    issue = TokenIssue("XSHOP", "xShop", 1000)
    draft = build_payment(eps, [TxOut(1000, KEYS[1].address, "XSHOP")], CHANGE.address, issue=issue)
    signed = sign(draft.tx, draft.spent)
    assert signed.issue == issue and draft.spent[0].token is None  # input 0 is EPS: its owner is the issuer
    assert check_inputs(signed, view_of(eps), 10, REGTEST) == draft.fee > 0

    tokens = wallet_coins([600, 400], "XSHOP", start=100)
    draft = build_payment(eps + tokens, [TxOut(450, PAYEE.address, "XSHOP")], CHANGE.address)
    signed = sign(draft.tx, draft.spent)
    assert check_inputs(signed, view_of(eps + tokens, {"XSHOP"}), 10, REGTEST) == draft.fee
    by_token = {(o.token, o.address): o.amount for o in signed.outputs}
    assert by_token[("XSHOP", PAYEE.address)] == 450 and by_token[("XSHOP", CHANGE.address)] == 150
    assert [c.amount for c in draft.spent if c.token] == [600]  # one coin covered it
    with pytest.raises(InsufficientFunds, match="not enough to spend: 1000 XSHOP available"):
        build_payment(eps + tokens, [TxOut(1001, PAYEE.address, "XSHOP")], CHANGE.address)
    with pytest.raises(InsufficientFunds, match="no spendable EPS"):
        build_payment(tokens, [TxOut(1, PAYEE.address, "XSHOP")], CHANGE.address)


# -- the header chain and the proof check ------------------------------------------------------------------


def headers_of(chain: ChainBuilder, first: int = 1) -> list[BlockHeader]:
    return [chain.block_at(h).header for h in range(first, chain.height + 1)]


def test_the_header_chain_checks_work_and_links_and_follows_the_most_work(tmp_path):
    chain = ChainBuilder(REGTEST)
    chain.add_blocks(10)
    headers = HeaderChain(open_data(tmp_path / "spv"), REGTEST)
    assert headers.add(headers_of(chain), now=chain.now) == 10 and headers.height == 10
    assert headers.add(headers_of(chain), now=chain.now) == 0  # known already
    assert headers.locator()[0] == chain.tip.block_id and headers.locator()[-1] == REGTEST.genesis_id

    following = chain.make_block().header
    with pytest.raises(ConsensusError, match="high-hash"):
        headers.add([unmine(following)], now=chain.now)  # no proof of work
    with pytest.raises(ConsensusError, match="bad-diffbits"):
        headers.add([mine(replace(following, bits=0x207FFFFE))], now=chain.now)  # harder than regtest's rule
    with pytest.raises(ConsensusError, match="prev-blk-not-found"):
        headers.add([mine(replace(following, prev="ab" * 32))], now=chain.now)
    with pytest.raises(ConsensusError, match="time-too-new"):
        headers.add([following], now=following.time - 3 * 3600)

    fork = chain.fork(7)
    fork.add_blocks(5)  # height 12: more work than the chain's 10
    assert headers.add(headers_of(fork, 8), now=fork.now) == 5
    assert headers.height == 12 and headers.active_id(8) == fork.block_at(8).block_id
    assert headers.active_height(chain.block_at(8).block_id) is None and headers.knows(chain.block_at(8).block_id)
    chain.add_blocks(3)  # the first chain takes the lead again: 13
    headers.add(headers_of(chain, 11), now=chain.now)
    assert headers.height == 13 and headers.active_id(9) == chain.block_at(9).block_id

    reopened = HeaderChain(open_data(tmp_path / "spv"), REGTEST)  # the headers persist
    assert reopened.height == 13 and reopened.tip().block_id == chain.tip.block_id
    with pytest.raises(ValueError, match="another network"):
        HeaderChain(open_data(tmp_path / "spv"), NETWORKS["demo"])


def test_a_proof_counts_only_with_a_valid_branch_to_a_header_of_the_wallets_best_chain(tmp_path):
    chain = ChainBuilder(REGTEST)
    alice = chain.key("alice")
    chain.add_blocks(REGTEST.coinbase_maturity + 3, coinbase_to=alice)
    payments = [make_transaction(chain.coinbase_outpoint(h), [(PAYEE, 10 * COIN)], alice) for h in (1, 2, 3)]
    block = chain.add_block(payments)
    fork = chain.fork(chain.height - 1)
    fork.add_block()  # a competing block at the same height: known, not on the best chain
    chain.add_blocks(2)
    headers = HeaderChain(open_data(tmp_path / "spv"), REGTEST)
    headers.add(headers_of(chain), now=chain.now)
    headers.add([fork.tip.header], now=fork.now)

    leaves = [bytes.fromhex(tx.txid) for tx in block.transactions]
    height = chain.height - 2
    for position, tx in enumerate(block.transactions):
        proof = Proof(tx.txid, block.header, height, position,
                      tuple(h.hex() for h in merkle_branch(leaves, position)))
        assert verify_proof(proof, tx.txid, headers) == height
    txid = payments[1].txid
    good = Proof(txid, block.header, height, 2, tuple(h.hex() for h in merkle_branch(leaves, 2)))
    refusals = {
        "does not lead to the block header's merkle root": replace(good, branch=("00" * 32,) + good.branch[1:]),
        "is not in the wallet's header chain": Proof(txid, replace(block.header, merkle_root=txid, nonce=9), height,
                                                     0, ()),  # consistent, but a block nobody mined on this chain
        f"it says height {height + 1}, the block is at {height}": replace(good, height=height + 1),
        "not for": replace(good, txid=payments[0].txid),
    }
    for expected, forged in refusals.items():
        with pytest.raises(ProofError, match=re.escape(expected)):
            verify_proof(forged, txid, headers)
    # A proof into the fork's block: its coinbase is there, the block just is not on the best chain.
    coinbase = fork.tip.transactions[0].txid
    with pytest.raises(ProofError, match="is not on the wallet's best chain"):
        verify_proof(Proof(coinbase, fork.tip.header, fork.height, 0, ()), coinbase, headers)


# -- end to end: real nodes, real wallets --------------------------------------------------------------

PASSPHRASE = "a wallet for the test"
CLIENT = str(ROOT / "peer_client.py")
ADDRESS = re.compile(r"first receive address: (R\w+)")


@dataclass
class Network:
    services: NodeProcess  # blockchain + wallet-services: what the wallets talk to
    miner: NodeProcess  # mining to the first wallet, connected to services
    base: Path
    funded: Path  # the first wallet, paid by the miner
    funded_address: str


def run_wallet(node: NodeProcess | tuple[str, int], wallet: Path | None, *commands: str,
               passphrase: str = PASSPHRASE) -> subprocess.CompletedProcess:
    host, port = node.address if isinstance(node, NodeProcess) else node
    args = [sys.executable, CLIENT, f"{host}:{port}", "--no-colour"]
    if wallet is not None:
        args += ["--wallet", str(wallet)]
    for command in commands:
        args += ["--send", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=90, cwd=ROOT,
                          env={**os.environ, "EPSCOIN_PASSPHRASE": passphrase})


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def new_wallet(net: Network, name: str) -> tuple[Path, str]:
    path = net.base / name
    out = ok(run_wallet(net.services, path, "/wallet new"))
    return path, ADDRESS.search(out).group(1)


def sent_txid(out: str) -> str:
    return re.search(r"^sent ([0-9a-f]{64})$", out, re.M).group(1)


def balance(out: str, asset: str = "EPS") -> dict[str, str]:
    """The /balance table row of an asset, by column."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("asset "))
    columns = ["asset", "confirmed", "unconfirmed", "spendable", "final", "immature"]
    for line in lines[header + 1:]:
        cells = line.split()
        if cells and cells[0] == asset:
            return dict(zip(columns, cells))
    raise AssertionError(f"no {asset} row in:\n{out}")


def tx_state(node: NodeProcess, txid: str) -> TxInfo | Error:
    with node.connect() as client:
        client.handshake()
        client.send(f'gettx {{"txid":"{txid}"}}')
        while True:
            message = client.recv_message()
            if isinstance(message, (TxInfo, Error)):
                return message


def wait_confirmed(node: NodeProcess, txid: str, depth: int = 1, timeout: float = 30) -> TxInfo:
    def deep_enough():
        state = tx_state(node, txid)
        return state if isinstance(state, TxInfo) and state.confirmations >= depth else None
    return wait_until(deep_enough, timeout=timeout, interval=0.2, message=f"{txid[:16]} {depth} deep")


@contextmanager
def paused(node: NodeProcess) -> Iterator[None]:
    """Nothing is mined meanwhile: a payment stays unconfirmed as long as the test needs to look at it."""
    os.kill(node.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(node.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Iterator[Network]:
    base = tmp_path_factory.mktemp("wallets")
    subnet = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    # Long frame timeouts: the miner is stopped (SIGSTOP) for seconds at a time, and must not be dropped for it.
    common = ("--frame-timeout", "60", "--handshake-timeout", "60", *ISOLATED, "--network", "regtest", "--outbound", "0")
    services = NodeProcess(base / "services", *common, "--roles", "routing,blockchain,chat,wallet-services",
                           host=f"{subnet}.1")
    nodes = [services]
    try:
        funded = base / "miner.wallet"
        out = ok(run_wallet(services, funded, "/wallet new"))
        address = ADDRESS.search(out).group(1)
        miner = NodeProcess(base / "miner", *common, "--roles", "routing,blockchain,chat,mining", "--mine-to", address,
                            "--connect", f"{services.host}:{services.port}", host=f"{subnet}.2")
        nodes.append(miner)

        def services_height() -> int:
            with services.connect() as client:
                client.handshake()
                client.send("getblockchaininfo")
                return client.recv_until("blockchaininfo").height
        wait_until(lambda: services_height() > REGTEST.coinbase_maturity + 10, timeout=30, interval=0.2,
                   message="mature coinbases on the services node")
        yield Network(services, miner, base, funded, address)
    finally:
        for node in nodes:
            node.kill()


def test_a_payment_is_seen_unconfirmed_then_confirmed_by_a_merkle_proof_checked_on_the_wallets_headers(net):
    shop, shop_address = new_wallet(net, "shop.wallet")
    with paused(net.miner):
        out = ok(run_wallet(net.services, net.funded, "/balance"))
        miner_eps = balance(out)
        assert float(miner_eps["spendable"]) > 0 and float(miner_eps["immature"]) > 0  # the last blocks are young
        assert 0 < float(miner_eps["final"]) < float(miner_eps["confirmed"])  # the last 5 are not yet final

        out = ok(run_wallet(net.services, net.funded, f"/send {shop_address} 1.5"))
        txid = sent_txid(out)
        assert re.search(rf"1\.50000000 EPS to {shop_address}; fee 0\.0000\d+ EPS", out)
        out = ok(run_wallet(net.services, shop, "/balance", "/history"))
        assert balance(out) == {"asset": "EPS", "confirmed": "0.00000000", "unconfirmed": "1.50000000",
                                "spendable": "0.00000000", "final": "0.00000000", "immature": "0.00000000"}
        assert re.search(rf"{txid}  \+1\.50000000 EPS  unconfirmed", out)
    info = wait_confirmed(net.services, txid)
    out = ok(run_wallet(net.services, shop, "/balance", "/history"))
    assert balance(out)["confirmed"] == "1.50000000" and balance(out)["unconfirmed"] == "0.00000000"
    assert re.search(rf"1\.50000000 EPS  {shop_address}  \d+ confirmations?(, final)?, block {info.height}", out)
    assert re.search(rf"{txid}  \+1\.50000000 EPS  \d+ confirmations?(, final)? \(block {info.height}\)", out)
    with sqlite3.connect(shop.with_name(shop.name + ".spv")) as db:  # what the wallet proved, and where
        assert db.execute("SELECT block, height FROM txs WHERE txid = ?", (txid,)).fetchone() == \
            (info.block, info.height)
        headers = db.execute("SELECT COUNT(*) FROM headers").fetchone()[0]
    assert headers >= info.height + 1  # the wallet holds the header chain up to that block
    out = ok(run_wallet(net.services, net.funded, "/history 100000"))
    assert re.search(rf"{txid}  -1\.5000\d+ EPS  \(fee 0\.0000\d+ EPS\)", out)


def test_incoming_payments_appear_in_the_repl_as_they_arrive(net, monkeypatch):
    path = net.base / "till.wallet"
    node = f"{net.services.host}:{net.services.port}"
    monkeypatch.setenv("EPSCOIN_PASSPHRASE", PASSPHRASE)
    term = Terminal(node, "--wallet", str(path), "--no-colour")
    try:
        term.read_until(r"no wallet at \S*till.wallet yet: /wallet new creates it")
        term.read_until(r"Msg>> ")
        term.type("/wallet new\r")
        address = re.search(r"first receive address: (R\w+)", term.read_until(r"first receive address: R\w+\s")).group(1)
        term.read_until(r"headers verified to height \d+", timeout=20)  # the new wallet is watched from now on
        with paused(net.miner):
            txid = sent_txid(ok(run_wallet(net.services, net.funded, f"/send {address} 2.25")))
            term.read_until(rf"incoming: 2\.25000000 EPS in tx {txid} \(unconfirmed\)", timeout=20)
        term.read_until(rf"confirmed: tx {txid} in block \d+, merkle proof checked against the wallet's headers",
                        timeout=30)
        term.type("/balance\r")
        term.read_until(r"EPS +2\.25000000 +0\.00000000 +2\.25000000", timeout=20)
        term.type("/quit\r")
        term.read_until(r"goodbye: you sent !exit")
        assert term.exit_code() == 0
    finally:
        _kill(term)
    monkeypatch.delenv("EPSCOIN_PASSPHRASE")  # now the hidden prompt asks, before any connection is made
    term = Terminal(node, "--wallet", str(path), "--no-colour")
    try:
        term.read_until(r"Wallet passphrase: ")
        term.type("not the passphrase\r")
        screen = term.read_until(r"error: wrong passphrase for \S*till.wallet")
        assert "not the passphrase" not in screen  # not echoed
        assert term.exit_code() == 1
    finally:
        _kill(term)


def _kill(term: Terminal) -> None:
    try:
        os.kill(term.pid, signal.SIGKILL)
        os.waitpid(term.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


class ProofForger:
    """A man in the middle between a wallet and a node: everything passes, but each `proof` is rewritten."""

    def __init__(self, target: tuple[str, int], forge: Callable[[Proof], Proof]) -> None:
        self.target = target
        self.forge = forge
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()[:2]
        self.forged = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._copy, args=(client, upstream), daemon=True).start()
        reader = FrameReader(upstream.makefile("rb"))
        try:
            while (text := reader.read_frame()) is not None:
                if text.startswith("proof "):
                    text = self.forge(decode_message(text)).encode()
                    self.forged += 1
                client.sendall(encode_frame(text))
        except OSError:
            pass
        finally:
            _hang_up(client)
            _hang_up(upstream)

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(sink)

    def close(self) -> None:
        self.server.close()


def _hang_up(sock: socket.socket) -> None:
    """shutdown first: close() alone sends no FIN while another thread is still blocked in recv()."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def wrong_branch(proof: Proof) -> Proof:
    return replace(proof, branch=("00" * 32,) + proof.branch[1:] if proof.branch else ("00" * 32,))


def made_up_block(proof: Proof) -> Proof:
    """Self-consistent: a header whose merkle root is the txid itself. Only the header chain can catch it."""
    return replace(proof, header=replace(proof.header, merkle_root=proof.txid), position=0, branch=())


def test_a_forged_proof_is_refused_and_the_coin_not_counted(net):
    _, address = new_wallet(net, "forge-target.wallet")
    txid = sent_txid(ok(run_wallet(net.services, net.funded, f"/send {address} 3")))
    wait_confirmed(net.services, txid)
    keystore = (net.base / "forge-target.wallet").read_bytes()
    for name, forge, reason in [
            ("branch", wrong_branch, "the merkle branch does not lead to the block header's merkle root"),
            ("header", made_up_block, "is not in the wallet's header chain")]:
        copy = net.base / f"forged-{name}.wallet"  # the same keys, no proofs stored yet
        copy.write_bytes(keystore)
        copy.chmod(0o600)
        forger = ProofForger(net.services.address, forge)
        try:
            result = run_wallet(forger.address, copy, "/balance")
        finally:
            forger.close()
        assert forger.forged >= 1
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert re.search(rf"^error: .*forged proof for tx {txid}: .*{re.escape(reason)}", result.stderr)
        assert f"rejected: forged proof for tx {txid}" in result.stdout
        assert balance(result.stdout)["confirmed"] == "0.00000000"  # not counted
        honest = ok(run_wallet(net.services, copy, "/balance"))  # the same wallet, the node itself
        assert balance(honest)["confirmed"] == "3.00000000"


def test_tokens_are_issued_sent_and_listed_per_token(net):
    _, shop_address = new_wallet(net, "xshop-customer.wallet")
    out = ok(run_wallet(net.services, net.funded, '/issue XSHOP 1000 "xShop gift card"'))
    issue_txid = sent_txid(out)
    assert re.search(r"issues XSHOP \('xShop gift card'\): 1000 units to R\w+", out)
    # The issued units wait in the mempool; the wallet may spend its own unconfirmed outputs.
    out = ok(run_wallet(net.services, net.funded, f"/send {shop_address} 250 XSHOP"))
    send_txid = sent_txid(out)
    assert re.search(r"change 750 XSHOP to R\w+", out)
    wait_confirmed(net.services, send_txid)
    out = ok(run_wallet(net.services, net.base / "xshop-customer.wallet", "/balance", "/token XSHOP"))
    assert balance(out, "XSHOP") == {"asset": "XSHOP", "confirmed": "250", "unconfirmed": "0", "spendable": "250",
                                     "final": balance(out, "XSHOP")["final"], "immature": "0"}
    assert balance(out)["confirmed"] == "0.00000000"  # tokens carry no EPS
    assert re.search(r"XSHOP \('xShop gift card'\): supply 1000, burned 0, 2 holder address\(es\)", out)
    assert f"in tx {issue_txid}" in out
    out = ok(run_wallet(net.services, net.funded, "/balance"))
    assert int(balance(out, "XSHOP")["confirmed"]) == 750
    result = run_wallet(net.services, net.funded, f"/send {shop_address} 751 XSHOP")
    assert result.returncode == 1 and "not enough to spend: 750 XSHOP available" in result.stderr
    result = run_wallet(net.services, net.funded, '/issue XSHOP 5 "again"')
    assert result.returncode == 1
    assert f"XSHOP is already issued (tx {issue_txid}" in result.stderr


def run_all(*calls: Callable[[], subprocess.CompletedProcess]) -> list[subprocess.CompletedProcess]:
    """The calls at once, each in a thread (each runs a client process); their results in order."""
    results: list = [None] * len(calls)

    def run(index: int) -> None:
        results[index] = calls[index]()
    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_clients_sharing_a_wallet_take_turns_and_keep_every_key(net):
    path, _ = new_wallet(net, "shared.wallet")
    results = run_all(*[lambda: run_wallet(net.services, path, "/address")] * 3)
    addresses = {ok(result).splitlines()[2] for result in results}
    assert len(addresses) == 3 and all(address.startswith("R") for address in addresses)
    assert re.search(r"regtest wallet, 4 keys \(4 receive\)", ok(run_wallet(net.services, path, "/wallet")))


def test_wallet_failures_are_one_line_and_exit_one(net):
    missing = net.base / "nobody.wallet"
    corrupt = net.base / "corrupt.wallet"
    corrupt.write_text('{"format": "epscoin-keystore", "version": 1')
    cases = [
        ((net.services, net.funded, "/balance"), {"passphrase": "not it"}, "wrong passphrase for"),
        ((net.services, missing, "/balance"), {}, f"no wallet at {missing}: create it with /wallet new"),
        ((net.services, None, "/address"), {}, "no wallet: start peer_client.py with --wallet FILE"),
        ((net.services, corrupt, "/balance"), {}, "is not a readable keystore: not JSON"),
        ((net.services, net.funded, "/wallet new"), {}, "already exists; not overwriting a wallet"),
        ((net.services, net.funded, "/send RXKoT2UeVLTY489eJJfvuZAZVYr4pYknYy 1"), {},
         "is not a regtest address: address checksum does not match"),
        ((net.services, net.funded, f"/send {net.funded_address} 100000"), {}, "not enough to spend"),
        ((net.miner, net.funded, "/balance"), {}, "the node does not serve light wallets"),
    ]
    results = run_all(*[lambda case=case: run_wallet(*case[0], **case[1]) for case in cases])
    for (args, _, expected), result in zip(cases, results):
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, (expected, result.stderr)
        assert "Traceback" not in result.stderr
