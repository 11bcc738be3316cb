"""The local mesh: an HTTP proxy that obeys the same Istio VirtualServices and DestinationRules the cluster gets,
and exports Istio's request metrics. Run as `python -m localmesh.server`.
"""
