"""The pure core: the release spec, its status, the state machine, the routing plan and operators' commands.

Nothing here reads a clock, calls a network or starts a process; decisions take data and `now` and return
data. Everything above (the reconciler, the adapters, the commands) builds on it.
"""
