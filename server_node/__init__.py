"""The inference server daemon (`agilenn server`), its broker workers and `RemoteServer`."""
