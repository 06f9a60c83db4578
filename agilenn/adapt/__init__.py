"""On-device adaptation: what trains on the device, and the memory a training step needs."""
