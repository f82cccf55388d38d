"""Named networks: each a parameter set with its own genesis block, built into the code.

    main     the default: a block a minute, retargeted daily
    demo     a block every few seconds, for the classroom demo
    regtest  trivial proof of work and short maturity, for tests

Nodes on different networks refuse each other at the handshake: their version
carries the network's name and genesis block id.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from protocol.block import NULL_ID, Block, BlockHeader
from protocol.coin_address import encode_address
from protocol.transaction import COIN, TxOut, coinbase_transaction

GENESIS_MESSAGE = "epscoin genesis: the lecture's thirty lines of socket code, made real"


@dataclass(frozen=True)
class Network:
    name: str
    address_prefix: int  # first byte of every address: "E..." on main, "D..." on demo, "R..." on regtest
    pow_limit_bits: int  # the easiest target allowed
    target_spacing: int  # seconds between blocks the retarget aims for
    retarget_interval: int  # blocks between difficulty adjustments; 0: never (regtest)
    halving_interval: int  # blocks between halvings of the block reward
    coinbase_maturity: int  # blocks before a coinbase output may be spent
    initial_subsidy: int  # base units in the first blocks' reward
    genesis_time: int
    genesis_nonce: int
    max_block_size: int = 1_000_000  # bytes of canonical JSON, Bitcoin's pre-SegWit MAX_BLOCK_SIZE

    @functools.cached_property
    def genesis(self) -> Block:
        # The genesis reward goes to an address whose key nobody has: the all-zero hash.
        burn = encode_address(self.address_prefix, bytes(20))
        coinbase = coinbase_transaction(0, (TxOut(self.initial_subsidy, burn),), GENESIS_MESSAGE)
        header = BlockHeader(version=1, prev=NULL_ID, merkle_root=coinbase.txid, time=self.genesis_time,
                             bits=self.pow_limit_bits, nonce=self.genesis_nonce)
        return Block(header=header, transactions=(coinbase,))

    @property
    def genesis_id(self) -> str:
        return self.genesis.block_id


NETWORKS: dict[str, Network] = {network.name: network for network in (
    Network(name="main", address_prefix=33, pow_limit_bits=0x1F00FFFF, target_spacing=60,
            retarget_interval=1440, halving_interval=210_000, coinbase_maturity=100,
            initial_subsidy=50 * COIN, genesis_time=1796083200, genesis_nonce=9204),
    Network(name="demo", address_prefix=30, pow_limit_bits=0x1F00FFFF, target_spacing=5,
            retarget_interval=20, halving_interval=210_000, coinbase_maturity=10,
            initial_subsidy=50 * COIN, genesis_time=1796083200, genesis_nonce=101933),
    Network(name="regtest", address_prefix=60, pow_limit_bits=0x207FFFFF, target_spacing=1,
            retarget_interval=0, halving_interval=150, coinbase_maturity=5,
            initial_subsidy=50 * COIN, genesis_time=1796083200, genesis_nonce=0),
)}
