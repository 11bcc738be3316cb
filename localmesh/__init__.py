"""The local mesh: real Envoy, configured from the same Istio VirtualServices and DestinationRules the cluster gets,
with Istio's request metrics from Envoy's statistics. Run as `python -m localmesh.envoy.server`.
"""
