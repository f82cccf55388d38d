"""docs/protocol.md §5: the handshake, its order and its errors."""

from protocol.messages import Error, Version

from tests.support import wait_until


def test_node_answers_version_with_version_then_verack(node):
    with node.connect() as peer:
        theirs = peer.handshake(user_agent="/test/")
        assert theirs.addr_from == f"{node.host}:{node.port}"
        assert theirs.nonce != 0


def test_bare_version_from_a_person_is_accepted(node):
    with node.connect() as peer:
        peer.send("version")
        assert peer.recv_message().command == "version"
        assert peer.recv() == "verack"


def test_commands_before_version_are_refused_except_ping_and_chat(node):
    with node.connect() as peer:
        peer.send("verack")
        error = peer.recv_message()
        assert isinstance(error, Error) and error.reason == "send version first"
        peer.send("ping")
        assert peer.recv() == "pong"
        peer.send("hello before version")
        assert peer.recv_message().command == "ack"


def test_second_version_is_an_error_and_the_connection_stays(node):
    with node.connect() as peer:
        peer.handshake()
        peer.send_message(Version())
        error = peer.recv_message()
        assert isinstance(error, Error) and "duplicate version" in error.reason
        peer.sync_ping()


def test_version_with_the_nodes_own_nonce_is_a_self_connection(node):
    with node.connect() as peer:
        theirs = peer.handshake()
    with node.connect() as peer:
        peer.send_message(Version(nonce=theirs.nonce))
        error = peer.recv_message()
        assert isinstance(error, Error) and "connected to self" in error.reason
        peer.expect_closed()


def test_no_version_within_the_handshake_timeout_disconnects(node):
    with node.connect() as peer:
        error = peer.recv_message(timeout=5)
        assert isinstance(error, Error) and "handshake timeout" in error.reason
        peer.expect_closed()
    wait_until(lambda: "handshake timeout" in node.log())
