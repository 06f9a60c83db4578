"""``agilenn bench``: end-to-end latency of AgileNN against the schemes people would pick instead.

``devices``: the MAC-throughput cost model for device profiles. ``schemes``:
one client per scheme, each timing its own stages. ``runner``: warm-up,
measurement windows, statistics and the report. ``plots``: the PNG figures.
"""
