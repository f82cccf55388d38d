"""The Role base class, and the part of the node a role may use.

A role is one thing a node chooses to do (relay chat, route addresses, keep a
blockchain, mine). It hooks into every peer's handler loop through methods
named after commands: a role with `on_ping(self, peer, message)` is called for
every `ping` any peer sends. The lifecycle hooks say when a peer connects,
finishes its handshake, or leaves; `tick` runs about once a second on the
node's housekeeping thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Protocol

from protocol.messages import MESSAGE_TYPES, Message, Version
from protocol.networks import Network
from roles.peer import Direction, Peer

Handler = Callable[[Peer, Message], None]


class NodeContext(Protocol):
    """What the node offers its roles (node.Node implements it)."""

    nonce: int  # random per node, sent in every version; detects self-connections
    services: int  # the service bits of every role, sent in version
    listen_address: tuple[str, int]  # where the node accepts peers
    source_address: tuple[str, int] | None  # where its outbound connections leave from
    data_path: Path  # the node's data directory (a subdirectory per network but main)
    network: Network  # the chain this node follows
    stopping: bool

    def peers(self) -> list[Peer]: ...

    def ready_peers(self) -> list[Peer]: ...

    def broadcast(self, message: Message, exclude: Peer | None = None) -> int: ...

    def version_message(self) -> Version: ...

    def mark_ready(self, peer: Peer) -> None: ...

    def disconnect(self, peer: Peer, reason: str, tell_peer: bool = True) -> None: ...

    def disconnect_self_connection(self, peer: Peer) -> None: ...

    def misbehaving(self, peer: Peer, points: int, reason: str) -> None: ...

    def fail(self, reason: str) -> None: ...

    def open_outbound(self, host: str, port: int) -> object: ...

    def connected_to_node_at(self, host: str, port: int, direction: Direction | None = None) -> bool: ...

    def role(self, name: str) -> "Role | None": ...

    def emit(self, event: str, *args: object) -> None: ...


class Role:
    """Base class: override the hooks you need and add `on_<command>` handlers."""

    name: ClassVar[str]
    services: ClassVar[int] = 0  # service bits this role adds to the node's version
    requires: ClassVar[tuple[str, ...]] = ()  # roles this one builds on

    def __init__(self, node: NodeContext, settings: object | None = None) -> None:
        self.node = node

    def handlers(self) -> dict[str, Handler]:
        """This role's `on_<command>` methods, by command."""
        found = {}
        for command in MESSAGE_TYPES:
            method = getattr(self, f"on_{command}", None)
            if method is not None:
                found[command] = method
        return found

    def start(self) -> None:
        """The node is about to accept peers."""

    def stop(self) -> None:
        """The node has closed every connection; release files and threads."""

    def height(self) -> int | None:
        """The best block height this role knows, for the version message (None: no chain)."""
        return None

    def refuses_inbound(self, host: str) -> str | None:
        """A reason to refuse a new inbound connection from host (e.g. a ban), or None."""
        return None

    def on_misbehaving(self, peer: Peer, points: int, reason: str) -> None:
        """The peer broke a rule; `points` toward its misbehaviour score."""

    def on_new_tip(self, height: int) -> None:
        """The active chain has a new tip (emitted by the blockchain role)."""

    def on_mempool_changed(self) -> None:
        """A transaction entered the mempool (emitted by the blockchain role)."""

    def on_connect(self, peer: Peer) -> None:
        """A connection opened (before the handshake)."""

    def on_ready(self, peer: Peer) -> None:
        """The peer's version arrived: it may now use every command."""

    def on_disconnect(self, peer: Peer) -> None:
        """The connection closed; the peer is no longer in node.peers()."""

    def tick(self, now: float) -> None:
        """Periodic work, about once a second; `now` is time.monotonic()."""
