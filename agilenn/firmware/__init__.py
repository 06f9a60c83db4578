"""The device part of a model as int8 firmware: the Python reference, the AGW1 image, the C sources.

docs/FIRMWARE.md is the contract; ``int8`` is the bit-exact integer reference the C code in
``c/`` must match byte for byte.
"""
