"""Adapters: the controller's ports implemented over real systems, one folder per system it talks to.

`kubernetes/` (the API server: Deployments, Istio objects, status, Events, leases; and the controller
process), `istio/` (rendering plans into VirtualServices/DestinationRules and reading them back), `prometheus/`
(metrics queries, and a Prometheus server for local runs), `http/` (hooks, notifiers, signed webhooks), `local/`
(this machine: stack processes, the local mesh's admin API, state files).
"""
