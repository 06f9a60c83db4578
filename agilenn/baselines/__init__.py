"""The schemes people would pick instead of AgileNN, implemented for real.

``models``: the full CNN that raw-offload, jpeg-offload and split8 run on the
server, and a tiny standalone CNN for local-only. ``payloads``: their wire
formats (pure codecs). ``checkpoint``: how they are stored and hashed.
"""
