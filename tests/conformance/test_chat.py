"""§7 Chat relay: typed lines, the flood with dedupe by id, and control characters."""

from __future__ import annotations

import pytest

from .spec import spec
from .wire import (
    CHAT_ID_PATTERN,
    compact,
    expect,
    expect_error,
    handshake,
    sync,
    sync_collect,
)

pytestmark = pytest.mark.usefixtures("needs_chat")


def relayed(*readers) -> list[list]:
    """The chat frames each reader has been sent, up to a sync ping."""
    return [[m for m in sync_collect(r) if m.word == "chat"] for r in readers]


def typed(typist, line: str) -> str:
    """Type a line; return the id of its ack. The sync makes sure the flood is done (§6.1)."""
    typist.send(line)
    ack = expect(typist, "ack", why=f"to the typed line {line[:30]!r}")
    sync(typist)
    return ack.get("id")


# -- §7.1 typed lines ---------------------------------------------------------------------------


@spec("§7.1", "a typed line becomes chat {id, from: the typist's address, text: the line}, relayed to the others")
def test_typed_line_relayed(connect):
    typist, b, c = connect(name="typist"), connect(name="b"), connect(name="c")
    for p in (typist, b, c):
        handshake(p)
    line = "hello from the typist, ünïcödé ✓"
    line_id = typed(typist, line)
    assert isinstance(line_id, str) and CHAT_ID_PATTERN.fullmatch(line_id), f"a chat id must match §4.5: {line_id!r}"
    for reader, got in zip((b, c), relayed(b, c)):
        assert len(got) == 1, f"{reader.name} must receive the line exactly once, got {[str(m) for m in got]}"
        assert got[0].body == {"id": line_id, "from": typist.local_address, "text": line}, (
            f"expected chat {{id: {line_id}, from: {typist.local_address}, text: the line}}, got {got[0]}")
    assert relayed(typist) == [[]], "the line must not come back to the typist"


@spec("§7.1", "every typed line gets a fresh id, even the same text twice; both are relayed")
def test_fresh_ids(connect):
    typist, reader = connect(name="typist"), connect(name="reader")
    handshake(typist)
    handshake(reader)
    first, second = typed(typist, "same text"), typed(typist, "same text")
    assert first != second, f"two typed lines got the same id {first!r}"
    ids = [m.get("id") for m in relayed(reader)[0]]
    assert ids == [first, second], f"both lines must be relayed once each, got ids {ids}"


@spec("§7.1", "typed text is counted in characters: 1,000 are accepted, 1,001 refused (error, not relayed)")
def test_typed_length_in_characters(connect):
    typist, reader = connect(name="typist"), connect(name="reader")
    handshake(typist)
    handshake(reader)
    typed(typist, "é" * 1000)  # 2,000 bytes, 1,000 characters
    typist.send("é" * 1001)
    expect_error(typist, command="chat", why="to a typed line of 1,001 characters")
    sync(typist, why="after the too-long line (the connection stays open)")
    texts = [m.get("text") for m in relayed(reader)[0]]
    assert texts == ["é" * 1000], f"only the 1,000-character line may be relayed, got {[len(t) for t in texts]}"


# -- §7.2 receiving a line ----------------------------------------------------------------------


@spec("§7.2", "a chat is acked, relayed unchanged to every ready peer but its sender exactly once, not to unready ones")
def test_chat_flood(connect):
    origin, b, c, unready = (connect(name=n) for n in ("origin", "b", "c", "unready"))
    for p in (origin, b, c):
        handshake(p)
    sync(unready)
    body = {"id": "flood-0001", "from": "192.0.2.7:5050", "text": "flooded line"}
    origin.send(compact("chat", body))
    assert expect(origin, "ack").body == {"id": body["id"]}
    sync(origin)
    got_b, got_c, back, not_ready = relayed(b, c, origin, unready)
    for name, got in (("b", got_b), ("c", got_c)):
        assert [m.body for m in got] == [body], f"{name} must get the chat once, unchanged; got {[str(m) for m in got]}"
    assert back == [], f"the sender must not get its chat back, got {[str(m) for m in back]}"
    assert not_ready == [], f"a peer that is not ready must not get relayed lines, got {[str(m) for m in not_ready]}"


@spec("§7.2", "a chat id seen before is acked again but not relayed again, whoever sends it")
def test_dedupe_by_id(connect):
    a, b, c = (connect(name=n) for n in ("a", "b", "c"))
    for p in (a, b, c):
        handshake(p)
    body = {"id": "dedupe-0001", "from": "192.0.2.8:5050", "text": "only once"}
    a.send(compact("chat", body))
    expect(a, "ack")
    sync(a)
    assert [len(x) for x in relayed(b, c)] == [1, 1]
    a.send(compact("chat", body))  # the same line again from its sender
    assert expect(a, "ack", why="to a duplicate chat").get("id") == body["id"]
    b.send(compact("chat", {**body, "text": "same id, other text"}))  # and from a peer it was relayed to
    assert expect(b, "ack", why="to a duplicate chat from another peer").get("id") == body["id"]
    sync(a)
    sync(b)
    again = relayed(a, b, c)
    assert again == [[], [], []], f"a seen id must not be relayed again, got {[[str(m) for m in x] for x in again]}"


# -- §7.5 control characters ------------------------------------------------------------------

CONTROL = {"ESC": "\u001b[2J", "CR": "forged\rline", "LF": "two\nlines", "NUL": "a\u0000b", "BEL": "ding\u0007",
           "DEL": "a\u007f", "C1 CSI": "a\u009b2J", "C1 NEL": "a\u0085b"}
ALLOWED = {"TAB": "a\tb", "LINE SEPARATOR": "a\u2028b", "RLM bidi mark": "a\u200fb", "emoji": "ok 😀"}


@spec("§7.5", "a typed line with a control character gets error 'control characters' {command:chat}, no ack, no relay")
@pytest.mark.parametrize("name", list(CONTROL))
def test_control_characters_refused(connect, name):
    typist, reader = connect(name="typist"), connect(name="reader")
    handshake(typist)
    handshake(reader)
    typist.send(CONTROL[name])
    expect_error(typist, command="chat", contains="control characters", why=f"to a line with {name}")
    sync(typist, why="after the error (no ack may follow)")
    assert relayed(reader) == [[]], f"a line with {name} must not be relayed"


@spec("§7.5", "TAB, U+2028, bidirectional marks and emoji are allowed in a typed line")
@pytest.mark.parametrize("name", list(ALLOWED))
def test_allowed_characters(connect, name):
    typist, reader = connect(name="typist"), connect(name="reader")
    handshake(typist)
    handshake(reader)
    typed(typist, ALLOWED[name])
    texts = [m.get("text") for m in relayed(reader)[0]]
    assert texts == [ALLOWED[name]], f"expected the line relayed unchanged, got {texts}"
