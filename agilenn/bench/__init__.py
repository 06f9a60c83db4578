"""``agilenn bench``: end-to-end latency of AgileNN against the schemes people would pick instead.

``config``: what a run measures. ``schemes``: the scheme families, one class
each, registered by name; each scheme times its own stages. ``servers``: the
``agilenn server`` processes the families need. ``runner``: warm-up and
measurement windows. ``report``: statistics, the goals and the table.
``devices``: the MAC-throughput cost model for device profiles. ``plots``: the
PNG figures.
"""
