"""Envoy as the local mesh: the Istio objects the project renders, translated into Envoy's v3 configuration the way
Istio's control plane translates them (`translate`, with `routes` and `policies`, all pure), and the Envoy process
that runs it, reconfigured through file-based dynamic resources without a restart (`process`, the I/O edge;
`instances` gives each cluster instance its endpoints file and a stat name of its own; `readback` reads Envoy's own
answer back into data); Istio's standard metrics from Envoy's statistics (`metrics`: Prometheus relabelling rules
and the same mapping for a direct scrape)."""
