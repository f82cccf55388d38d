"""The chat role: print each chat line, acknowledge it, and flood it on once.

A line typed at any peer reaches every node exactly once: each node relays a
chat id the first time it hears it and ignores it after that.
"""

from __future__ import annotations

import logging

from protocol.messages import Ack, Chat
from protocol.messages.handshake import NODE_NETWORK
from roles.base import NodeContext, Role
from roles.peer import Peer
from roles.seen import SeenFilter

log = logging.getLogger("epscoin.node")

SEEN_CHAT_IDS = 50_000  # remembered ids; far more than a network relays in a relay's lifetime


class ChatRole(Role):
    name = "chat"

    def __init__(self, node: NodeContext, settings: object | None = None) -> None:
        super().__init__(node)
        self.seen = SeenFilter(SEEN_CHAT_IDS)

    def on_chat(self, peer: Peer, message: Chat) -> None:
        if not (peer.ready and peer.version.services & NODE_NETWORK):
            # A person's client waits for a frame after each line; a node relaying the
            # flood does not, and acking every copy would double the frames of a flood.
            peer.send(Ack(id=message.id))
        if not self.seen.add(message.id):
            return
        log.info("[%s] %s", message.sender, message.text)  # the lecture's console line
        self.node.broadcast(message, exclude=peer)
