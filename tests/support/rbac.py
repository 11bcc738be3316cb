"""The namespaces and the exact RBAC the shipped manifests grant the controller, as the tests expect them."""

from __future__ import annotations

STACK_NS = "search"


CONTROLLER_NS = "stack-canary-system"


EXPECTED_PERMISSIONS = {
    *(("cluster", "stackcanary.dev", "stackreleases", v) for v in ("get", "list", "watch", "patch")),
    ("cluster", "stackcanary.dev", "stackreleases/status", "update"),
    ("cluster", "stackcanary.dev", "stackreleases/finalizers", "update"),
    *((STACK_NS, "apps", "deployments", v) for v in ("list", "create", "patch")),
    *((STACK_NS, "networking.istio.io", r, v)
      for r in ("virtualservices", "destinationrules")
      for v in ("list", "create", "patch")),
    (STACK_NS, "", "events", "create"),
    (STACK_NS, "", "secrets", "get"),  # hooks' secretRef, one named Secret at a time
    # HPAs: the canary's copy (create, patch, delete) and the user's retargeted at promotion (patch).
    *((STACK_NS, "autoscaling", "horizontalpodautoscalers", v) for v in ("list", "create", "patch", "delete")),
    *((CONTROLLER_NS, "coordination.k8s.io", "leases", v) for v in ("get", "create", "update")),
}
