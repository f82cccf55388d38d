"""The light (SPV) wallet of peer_client.py: keys stay in this process, every answer from the node is checked.

- keystore.py     the private keys, encrypted under a passphrase (scrypt, ChaCha20-Poly1305), written atomically
- spv.py          the wallet's own header chain (proof of work, links, most work) and the merkle-proof check
- history.py      the transactions the wallet has seen, and what each did to its balance
- coins.py        amounts, coin selection, change and fee
- light_wallet.py the wallet: refresh from a wallet-services node, balances, payments, token issues
- commands.py     the REPL's /wallet, /address, /balance, /send, /issue, /token and /history

Unlike the node's roles, the wallet is a client: it runs inside peer_client.py
and talks to one node over the connection the REPL already has.
"""

from roles.wallet.coins import WalletError
from roles.wallet.commands import COMMANDS, HELP, WalletCommands
from roles.wallet.keystore import Keystore, KeystoreError
from roles.wallet.light_wallet import LightWallet, NodeLink

__all__ = ["COMMANDS", "HELP", "Keystore", "KeystoreError", "LightWallet", "NodeLink", "WalletCommands",
           "WalletError"]
