"""The canary and A/B rollout controller.

Layers, lowest first (import-linter checks them; docs/architecture.md draws them): `core/` (pure
decisions), `ports.py` (every Protocol) and `logs.py`, `reconciler.py` (one tick: observe -> step -> persist
-> act), `adapters/` (the ports over Kubernetes, Istio, Prometheus, HTTP and this machine), `present/`
(terminal views, HTML report), `cli/` (the `canary` command).
"""
