"""Prometheus: exact interval counts and business metrics from its HTTP API, and a server for local runs."""
