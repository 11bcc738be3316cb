"""Istio objects: a routing plan rendered into DestinationRules and VirtualServices, read back, and validated."""
