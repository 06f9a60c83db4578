"""Fleet learning across many devices: aggregation that fits sparse updates (issue #12, in progress)."""
