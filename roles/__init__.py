"""What one node chooses to do, one role per module.

ROLE_TYPES maps the names accepted by `node.py --roles` to their classes;
FULL_NODE_ROLES is what a node runs when no --roles is given. The core role
(handshake, ping) always runs and is not listed.
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

__all__ = ["FULL_NODE_ROLES", "ROLE_TYPES", "ChatRole", "CoreRole", "NodeContext", "Role", "RoutingRole", "BlockchainRole", "MiningRole", "WalletServicesRole"]
