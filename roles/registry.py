"""The roles a node can run, by the names `node.py --roles` accepts.

ROLE_TYPES maps each name to its class; FULL_NODE_ROLES is what a node runs
when no --roles is given. The core role (handshake, ping) always runs and is
not listed. A new role is a class and a line here.
"""

from roles.base import NodeContext, Role
from roles.blockchain import BlockchainRole
from roles.chat import ChatRole
from roles.core import CoreRole
from roles.mining import MiningRole
from roles.wallet_services import WalletServicesRole
from roles.routing import RoutingRole

ROLE_TYPES: dict[str, type[Role]] = {
    RoutingRole.name: RoutingRole,
    BlockchainRole.name: BlockchainRole,
    ChatRole.name: ChatRole,
    MiningRole.name: MiningRole,
    WalletServicesRole.name: WalletServicesRole,
}

FULL_NODE_ROLES: tuple[str, ...] = ("routing", "blockchain", "chat")

__all__ = ["FULL_NODE_ROLES", "ROLE_TYPES", "ChatRole", "CoreRole", "NodeContext", "Role", "RoutingRole", "BlockchainRole",
           "MiningRole", "WalletServicesRole"]
