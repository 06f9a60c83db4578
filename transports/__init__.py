"""Links between devices, edge nodes and servers: schema, ZeroMQ, serial framing and ARQ, emulator, broker."""
