"""The ACP client side: a JSON-RPC 2.0 peer on trio, typed messages and the client.

See docs/acp.md for what is supported and how real agents are configured.
"""

from .client import AcpClient, AcpError, AcpSession, ClientOptions, LoadedSession
from .jsonrpc import JsonRpcPeer, PeerClosed, RpcError
from .policy import FsAccess, PermissionPolicy

__all__ = [
    "AcpClient",
    "AcpError",
    "AcpSession",
    "ClientOptions",
    "FsAccess",
    "JsonRpcPeer",
    "LoadedSession",
    "PeerClosed",
    "PermissionPolicy",
    "RpcError",
]
