"""Outgoing HTTP: release hooks, chat and webhook notifications, their URL policy, signing and retries."""
