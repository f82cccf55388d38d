"""The core role every node runs: the handshake, ping/pong, and hearing errors.

Handshake, as Bitcoin's: the dialler sends `version`; the listener answers with
its own `version` and a `verack`; the dialler answers the listener's version
with `verack`. A peer is ready the moment its `version` arrives, so a person
typing `version` in a chat client never needs to type `verack`.
"""

from __future__ import annotations

import logging

from protocol.messages import Ack, Error, Goodbye, Ping, Pong, Verack, Version
from roles.base import Role
from roles.peer import Direction, Peer

log = logging.getLogger("epscoin.node")


class CoreRole(Role):
    name = "core"

    def on_connect(self, peer: Peer) -> None:
        if peer.direction is Direction.OUTBOUND:
            peer.send(self.node.version_message())
            peer.sent_version = True

    def on_version(self, peer: Peer, message: Version) -> None:
        if peer.ready:
            peer.send(Error("duplicate version: the handshake is already done", about="version"))
            self.node.misbehaving(peer, 1, "duplicate version")  # Bitcoin scores it 1
            return
        if message.nonce == self.node.nonce:
            self.node.disconnect_self_connection(peer)
            return
        ours = self.node.network
        if (message.network and message.network != ours.name) or (message.genesis and message.genesis != ours.genesis_id):
            self.node.disconnect(peer, f"different network: this node is on {ours.name} "
                                       f"(genesis {ours.genesis_id[:16]}...), you are on {message.network or '?'}")
            return
        replies = [] if peer.sent_version else [self.node.version_message()]
        peer.sent_version = True
        peer.become_ready(message, replies + [Verack()])
        self.node.mark_ready(peer)

    def on_verack(self, peer: Peer, message: Verack) -> None:
        """Our version arrived at the peer; nothing more to do."""

    def on_ping(self, peer: Peer, message: Ping) -> None:
        peer.send(Pong(nonce=message.nonce))

    def on_pong(self, peer: Peer, message: Pong) -> None:
        """Answers to our pings; the routing role measures latency from them."""

    def on_ack(self, peer: Peer, message: Ack) -> None:
        """A peer received a chat line we relayed."""

    def on_error(self, peer: Peer, message: Error) -> None:
        about = f" (about '{message.about}')" if message.about else ""
        log.warning("[PEER ERROR] %s says: %s%s", peer.address, message.reason, about)

    def on_goodbye(self, peer: Peer, message: Goodbye) -> None:
        log.info("[GOODBYE] %s is leaving: %s", peer.address, message.reason or "no reason given")
