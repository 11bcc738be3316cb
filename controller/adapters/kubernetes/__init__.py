"""The Kubernetes adapter: the ports over the API server, and the controller process (watching, queueing,
leadership, ticking, wiring, running).
"""
