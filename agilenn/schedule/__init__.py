"""A POET-style memory scheduler for on-device training: recomputation and paging as a MILP.

:func:`~agilenn.schedule.graph.trace_training_graph` makes the graph,
:func:`~agilenn.schedule.milp.solve` plans within a memory and time budget,
:class:`~agilenn.schedule.program.Plan` is the schedule (a few hundred bytes),
and :class:`~agilenn.schedule.executor.Executor` runs it in PyTorch.
"""
