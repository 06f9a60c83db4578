"""AgileNN split inference for extremely weak devices."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The runtime pieces live in edge_node/ and server_node/, which import torch
    # and ZeroMQ; import them only when asked for.
    if name == "EdgeClient":
        from edge_node.client import EdgeClient

        return EdgeClient
    if name == "RemoteServer":
        from server_node.remote import RemoteServer

        return RemoteServer
    raise AttributeError(f"module 'agilenn' has no attribute {name!r}")
