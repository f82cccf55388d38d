"""Every message type of the protocol, one small class each.

Importing this package registers them all in MESSAGE_TYPES.
"""

from protocol.fields import MessageError
from protocol.messages.addr import Addr, AddressEntry, GetAddr
from protocol.messages.base import MESSAGE_TYPES, Message, decode_message, register
from protocol.messages.blocks import BlockMessage, GetHeaders, Headers, TxMessage
from protocol.messages.chaininfo import (BlockchainInfo, BlockInfo, GetBlock, GetBlockchainInfo, GetToken, GetTx,
                                         TokenInfo, TxInfo)
from protocol.messages.chat import MAX_CHAT_TEXT, Ack, Chat, new_chat_id
from protocol.messages.control import Error, Goodbye
from protocol.messages.handshake import PROTOCOL_VERSION, Verack, Version
from protocol.messages.inventory import GetData, InvItem, Inv, MempoolRequest, NotFound
from protocol.messages.keepalive import Ping, Pong
from protocol.messages.mining import GetMiningInfo, MiningInfo
from protocol.messages.wallet import GetProof, GetUtxos, Proof, UtxoRow, Utxos
from protocol.messages.peerinfo import GetNetworkInfo, GetPeerInfo, NetworkInfo, PeerInfo, PeerRow

__all__ = [
    "BlockMessage", "GetHeaders", "Headers", "TxMessage", "BlockchainInfo", "BlockInfo", "GetBlock",
    "GetBlockchainInfo", "GetToken", "GetTx", "TokenInfo", "TxInfo", "GetData", "InvItem", "Inv", "MempoolRequest", "NotFound",
    "GetMiningInfo", "MiningInfo", "GetProof", "GetUtxos", "Proof", "UtxoRow", "Utxos",
    "MESSAGE_TYPES", "MAX_CHAT_TEXT", "PROTOCOL_VERSION", "Ack", "Addr", "AddressEntry", "Chat", "Error",
    "GetAddr", "GetNetworkInfo", "GetPeerInfo", "Goodbye", "Message", "MessageError", "NetworkInfo",
    "PeerInfo", "PeerRow", "Ping", "Pong", "Verack", "Version", "decode_message", "new_chat_id", "register",
]
