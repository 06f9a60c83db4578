"""The edge side: `EdgeClient`, the serial gateway for MCUs, and MCU pairing."""
