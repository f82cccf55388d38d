"""§3 Payload grammar: how a payload is classified, bodies, bad bodies, and the sender form."""

from __future__ import annotations

import json

import pytest

from .spec import spec
from .wire import (
    CHAT_ID_PATTERN,
    Msg,
    compact,
    expect,
    expect_closed,
    expect_error,
    handshake,
    sync,
    sync_collect,
)

CHAT = {"id": "grammar0000000001", "from": "127.0.0.1:1", "text": "x"}


# -- step 2: !exit ---------------------------------------------------------------------------


@spec("§3", "exactly `!exit` gets goodbye {\"reason\":\"you sent !exit\"}, then the close", also=("§6.1",))
@pytest.mark.parametrize("phase", ["before version", "after version"])
def test_exit(peer, phase):
    if phase == "after version":
        handshake(peer)
    peer.send("!exit")
    msg = expect(peer, "goodbye", why="to !exit")
    assert msg.body == {"reason": "you sent !exit"}, f"expected goodbye {{\"reason\":\"you sent !exit\"}}, got {msg}"
    expect_closed(peer, why="after the goodbye")


@spec("§3", "`!exit` with anything around it (' !exit', '!exit ') is a chat line: ack, stays open")
@pytest.mark.parametrize("line", [" !exit", "!exit ", "!EXIT"])
def test_exit_lookalikes_are_chat(ready, needs_chat, line):
    ready.send(line)
    expect(ready, "ack", why=f"to the chat line {line!r}")
    sync(ready, why=f"after {line!r}")


# -- step 3: commands ------------------------------------------------------------------------


@spec("§3", "`ping`, `ping ` and `ping {}` mean the same: a bare pong", also=("§4.3",))
@pytest.mark.parametrize("payload", ["ping", "ping ", "ping {}", "ping   {}  ", "ping \t{}\n"])
def test_empty_bodies(ready, payload):
    ready.send(payload)
    msg = expect(ready, "pong", why=f"to {payload!r}")
    assert "nonce" not in msg.body, f"{payload!r} has no nonce, so the pong has none (§4.3), got {msg}"


@spec("§3", "a registered command whose rest is not a JSON object gets error with its command; stays open")
@pytest.mark.parametrize("payload", ["ping [1]", "ping 7", "ping hello", "ping me", 'ping "x"', "ping null",
                                     'ping {"nonce":1} {"nonce":2}', 'ping {"nonce":1', "ping {'nonce':1}"])
def test_rest_must_be_a_json_object(ready, payload):
    ready.send(payload)
    expect_error(ready, command="ping", why=f"to {payload!r}")
    sync(ready, why=f"after the error for {payload!r} (the connection stays open)")


@spec("§3", "command words are case-sensitive and need the space: `PING`, `Ping`, `ping{…}` are chat")
@pytest.mark.parametrize("line", ["PING", "Ping", 'ping{"nonce":1}', "pingpong", "VERSION"])
def test_not_a_command_is_chat(ready, needs_chat, line):
    ready.send(line)
    expect(ready, "ack", why=f"to {line!r}, which is a chat line")


@spec("§3", "`ping\\n` is chat, then refused for its control character", also=("§7.5",))
def test_ping_newline_is_refused_chat(ready, needs_chat):
    ready.send("ping\n")
    expect_error(ready, command="chat", contains="control characters")
    sync(ready)


@spec("§3", "an unregistered word is chat, even with a JSON body: acked and relayed unchanged", also=("§7.1",))
def test_unregistered_word_is_chat(connect, needs_chat):
    typist, reader = connect(name="typist"), connect(name="reader")
    handshake(typist)
    handshake(reader)
    line = 'xyzzy {"x":1}'
    typist.send(line)
    expect(typist, "ack", why=f"to {line!r}")
    sync(typist)  # the typist's next frame is processed after the line, flood included (§6.1, §7.2)
    relayed = [m for m in sync_collect(reader) if m.word == "chat"]
    assert [m.get("text") for m in relayed] == [line], f"the reader must get the line once, got {relayed}"


# -- JSON details ----------------------------------------------------------------------------


@spec("§3", "NaN, Infinity and -Infinity are invalid JSON")
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_rejected(ready, constant):
    ready.send(f'ping {{"nonce":{constant}}}')
    expect_error(ready, command="ping", why=f"to a body holding {constant}")
    sync(ready)


@spec("§3", "an integer field holds a JSON integer: 1.0, 1e0, true and \"1\" are refused")
@pytest.mark.parametrize("value", ["1.0", "1e0", "true", '"1"', "-1", str(2**64), "[1]"])
def test_integer_fields(ready, value):
    ready.send(f'ping {{"nonce":{value}}}')
    expect_error(ready, command="ping", why=f"to nonce {value}")
    sync(ready)


@spec("§3", "nesting too deep is invalid JSON, answered without killing the connection")
def test_deep_nesting(ready):
    depth = 100_000
    ready.send('ping {"deep":' + "[" * depth + "]" * depth + "}")
    msg = ready.next()
    # An implementation whose parser copes with the depth ignores the unknown field (pong);
    # one whose parser gives up must call it invalid JSON (error). Either way the peer lives on.
    assert msg.word == "pong" or (msg.word == "error" and msg.get("command") == "ping"), (
        f"a deeply nested body must get a pong or error {{'command':'ping'}}, got {msg}")
    sync(ready, why="after the deeply nested body")


@spec("§3", "duplicate keys: the last one wins", level="stated")
def test_duplicate_keys(ready):
    ready.send('ping {"nonce":1,"nonce":2}')
    msg = expect(ready, "pong")
    assert msg.get("nonce") == 2, f"the last `nonce` wins, so the pong carries 2, got {msg}"


# -- text fields ----------------------------------------------------------------------------

BAD_TEXT = {"ESC": "\u001b[2J", "CR": "a\rb", "NUL": "a\u0000", "DEL": "a\u007f", "C1 NEL": "a\u0085"}


@spec("§3", "a string field with a control character is a bad body: error 'control characters', not processed")
@pytest.mark.parametrize("name", list(BAD_TEXT))
def test_control_characters_in_version_field(peer, name):
    peer.send(compact("version", {"user_agent": BAD_TEXT[name]}))
    expect_error(peer, command="version", contains="control characters")
    # Not processed: the peer is still not ready, so an answer command is refused (§5.3)...
    peer.send("verack")
    expect_error(peer, command="verack", exact="send version first",
                 why="after a malformed version: the malformed version must not have made the peer ready")
    handshake(peer)  # ...and a good version now completes the handshake


@spec("§3", "a string field with an escaped lone surrogate is a bad body: error 'not valid Unicode text'")
@pytest.mark.parametrize("word,body", [
    ("version", '{"user_agent":"a\\ud800"}'),
    ("chat", '{"id":"surrogate1","from":"127.0.0.1:1","text":"a\\ud800"}'),
    ("chat", '{"id":"surrogate2","from":"127.0.0.1:1\\udfff","text":"a"}'),
], ids=["version.user_agent", "chat.text", "chat.from"])
def test_lone_surrogates(peer, needs_chat, word, body):
    peer.send(f"{word} {body}")
    expect_error(peer, command=word, contains="not valid Unicode text")
    sync(peer, why="after the surrogate error (the connection stays open)")


@spec("§3", "every string field is a text field: control characters in addr_from or an addr entry are refused")
@pytest.mark.parametrize("word,body", [
    ("version", {"addr_from": "127.0.0.1:5050\u001b[2J"}),
    ("version", {"user_agent": "/ok/", "addr_from": "a\ud800"}),
    ("addr", {"addrs": [{"addr": "127.0.0.9:5050\r", "time": 1}]}),
], ids=["version.addr_from control", "version.addr_from surrogate", "addr entry control"])
def test_other_text_fields(ready, routing_role, word, body):
    if word == "addr" and routing_role is False:
        pytest.skip("the target does not run the routing role")
    ready.send(word + " " + json.dumps(body, separators=(",", ":")))  # ASCII: \u escapes, valid JSON
    msg = expect_error(ready, command=word)
    reason = msg.get("reason", "")
    assert "control characters" in reason or "not valid Unicode text" in reason, (
        f"the reason must say 'control characters' or 'not valid Unicode text' (§4.7), got {reason!r}")
    sync(ready)


@spec("§3", "a text field's length is checked first, then control characters and surrogates, then its format",
      level="stated")
def test_text_field_check_order(ready, needs_chat):
    ready.send(compact("version", {"user_agent": "\u001b" * 300}))
    reason = expect_error(ready, command="version").get("reason", "")
    assert "control characters" not in reason, f"an over-long user_agent is refused for its length first: {reason!r}"
    ready.send(compact("chat", {"id": "bad id\u0007", "from": "127.0.0.1:1", "text": "x"}))
    reason = expect_error(ready, command="chat").get("reason", "")
    assert "control characters" in reason, f"control characters are checked before the id's format: {reason!r}"


@spec("§3", "a chat message with a control character in any field gets an error and no ack", also=("§4.5",))
@pytest.mark.parametrize("field_name", ["text", "from", "id"])
def test_control_characters_in_chat_fields(ready, needs_chat, field_name):
    body = {"id": "ctrl0" + field_name, "from": "127.0.0.1:1", "text": "fine"}
    body[field_name] = body[field_name] + "\u001b"
    ready.send(compact("chat", body))
    expect_error(ready, command="chat", why=f"for a control character in chat.{field_name}")
    sync(ready, why="after the error (no ack may follow it)")


# -- forward compatibility ------------------------------------------------------------------


@spec("§3", "fields a receiver does not know are ignored; missing optional fields take their default")
def test_unknown_fields_ignored(peer):
    peer.send(compact("version", {"user_agent": "/fwd/", "future_field": {"a": [1, 2]}, "relay": True}))
    expect(peer, "version", why="to a version with unknown fields")
    expect(peer, "verack")
    peer.send('ping {"nonce":1,"extra":"x"}')
    msg = expect(peer, "pong")
    assert msg.body == {"nonce": 1}, f'`ping {{"nonce":1,"extra":"x"}}` is answered `pong {{"nonce":1}}`, got {msg}'


@spec("§3", "a receiver does not depend on key order or whitespace")
def test_whitespace_and_key_order(peer):
    peer.send('version {\n  "user_agent" : "/ws/",\t"version" : 1 ,\r\n "services":0\n}')
    expect(peer, "version", why="to a version written with spaces, tabs and newlines")
    expect(peer, "verack")
    peer.send('ping   {  "nonce"  :  5  }   ')
    msg = expect(peer, "pong")
    assert msg.get("nonce") == 5, msg


# -- bad bodies -----------------------------------------------------------------------------


@spec("§3", "a malformed request is answered error {command}, not processed, and the connection stays open")
@pytest.mark.parametrize("payload,word", [
    ('version {"version":-1}', "version"),
    ('chat {"id":"x","from":"a"}', "chat"),
    ("chat [1]", "chat"),
    ('getaddr [1]', "getaddr"),
    ('getpeerinfo 5', "getpeerinfo"),
    ('getnetworkinfo "x"', "getnetworkinfo"),
])
def test_malformed_request_answered(ready, payload, word, routing_role):
    if word.startswith("get") and routing_role is False:
        pytest.skip("the target does not run the routing role")
    ready.send(payload)
    expect_error(ready, command=word, why=f"to {payload!r}")
    sync(ready, why=f"after the error for {payload!r}")


@spec("§3", "a malformed gossip message (addr) is answered error {\"command\":\"addr\"}; stays open")
@pytest.mark.parametrize("payload", ["addr", "addr 5", 'addr {"addrs":5}', 'addr {"addrs":[5]}'])
def test_malformed_gossip_answered(ready, needs_routing, payload):
    ready.send(payload)
    expect_error(ready, command="addr", why=f"to {payload!r}")
    sync(ready)


MALFORMED_ANSWERS = ['error {"reason":5}', "error {}", 'pong {"nonce":-1}', 'pong {"nonce":"7"}',
                     'goodbye {"reason":"\\u001b[2J"}', "verack [1]", "ack {}", 'ack {"id":"bad id!"}',
                     'peerinfo {"peers":5}', "networkinfo {}"]


@spec("§3", "a malformed answer is dropped without an answer, even before version", also=("§6.3",))
@pytest.mark.parametrize("phase", ["before version", "after version"])
@pytest.mark.parametrize("payload", MALFORMED_ANSWERS)
def test_malformed_answer_dropped(peer, payload, phase):
    if phase == "after version":
        handshake(peer)
    peer.send(payload)
    sync(peer, why=f"after the malformed answer {payload!r}: nothing may answer it")


@spec("§3", "the body check comes before the handshake check: a malformed request before version gets the body error")
@pytest.mark.parametrize("payload,word", [("getaddr [1]", "getaddr"), ("addr 5", "addr"),
                                          ("getpeerinfo 7", "getpeerinfo")])
def test_body_check_before_handshake_check(peer, payload, word):
    peer.send(payload)
    msg = expect_error(peer, command=word, why=f"to {payload!r} before version")
    assert msg.get("reason") != "send version first", (
        f"a malformed {word} must get the body error, not 'send version first' (§3), got {msg}")


# -- sender form ----------------------------------------------------------------------------


@spec("§3", "every frame the node sends is `command` or `command {json object}` (one space)")
def test_sender_form(connect, routing_role, chat_role):
    a, b = connect(name="a"), connect(name="b")
    a.send(compact("version", {"user_agent": "/form/"}))
    b.send("verack")  # -> error, before version
    expect_error(b, command="verack")
    handshake(b)
    a.send("ping")
    a.send(compact("ping", {"nonce": 3}))
    a.send("version")  # duplicate -> error
    if chat_role is not False:
        a.send("hello from the sender-form check")  # -> ack, and a relayed chat to b
    if routing_role is not False:
        a.send("getaddr")
        a.send("getpeerinfo")
        a.send("getnetworkinfo")
    a.send("!exit")
    try:
        while True:
            a.next()
    except AssertionError:
        pass  # the close after goodbye
    sync_collect(b)
    received: list[Msg] = a.history + b.history
    assert any(m.word == "goodbye" for m in received), f"no goodbye among {[str(m) for m in received]}"
    bad = [f"{m} ({m.form_error})" for m in received if m.form_error or m.word is None]
    assert not bad, f"frames not in the sender form of §3: {bad}"
    for m in received:
        rest = m.text.partition(" ")[2]
        if rest:
            assert json.loads(rest) == m.body
    chats = [m for m in received if m.word == "chat"]
    for m in chats:
        assert CHAT_ID_PATTERN.fullmatch(str(m.get("id"))), f"a chat id must match §4.5, got {m}"
