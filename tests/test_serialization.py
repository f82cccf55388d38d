"""A transaction's bytes, written field by field, equal canonical_json(to_json()) for any transaction.

Transaction.serialized (the txid's input) is written directly, and the signature
hash's blanked form is made from it by blanking the signatures, for speed; the definition (docs/protocol.md §11.1) is
canonical_json of the JSON object. Hypothesis builds transactions with every
kind of field, text that needs escaping included, and holds the two equal.
"""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.tokens import MAX_TOKEN_SUPPLY, TokenBurn, TokenIssue
from protocol.transaction import OutPoint, Transaction, TxIn, TxOut, canonical_json

hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # quotes, backslashes, controls, é
tickers = st.from_regex(r"[A-Z][A-Z0-9]{2,7}", fullmatch=True)
spends = st.builds(TxIn, prevout=st.builds(OutPoint, hex64, st.integers(0, 2**32 - 1)),
                   pubkey=st.one_of(st.just(""), st.from_regex(r"0[23][0-9a-f]{64}", fullmatch=True)),
                   signature=st.one_of(st.just(""), st.from_regex(r"(?:[0-9a-f]{2}){8,72}", fullmatch=True),
                                       any_text, st.just('x","signature":"y')))  # not from the wire: any text
coinbases = st.builds(TxIn, prevout=st.none(), coinbase_height=st.integers(0, 2**31 - 1), coinbase_data=any_text)
outputs = st.builds(TxOut, amount=st.integers(-2**63, 2**63), address=any_text,
                    token=st.one_of(st.none(), tickers))
transactions = st.builds(
    Transaction, inputs=st.lists(st.one_of(spends, coinbases), max_size=4).map(tuple),
    outputs=st.lists(outputs, max_size=4).map(tuple), version=st.integers(0, 2**31 - 1),
    locktime=st.integers(0, 2**32 - 1),
    issue=st.one_of(st.none(), st.builds(TokenIssue, tickers, any_text, st.integers(1, MAX_TOKEN_SUPPLY))),
    burn=st.lists(st.builds(TokenBurn, tickers, st.integers(1, MAX_TOKEN_SUPPLY)), max_size=3).map(tuple))


@settings(max_examples=500, deadline=None)
@given(tx=transactions)
def test_the_written_bytes_are_the_canonical_json(tx):
    assert tx.serialized == canonical_json(tx.to_json())
    json.loads(tx.serialized)  # and valid JSON


@settings(max_examples=300, deadline=None)
@given(tx=transactions)
def test_the_signed_form_is_the_canonical_json_with_every_signature_blank(tx):
    blank = replace(tx, inputs=tuple(replace(txin, signature="") if txin.prevout else txin for txin in tx.inputs))
    assert tx._unsigned == canonical_json(blank.to_json())
