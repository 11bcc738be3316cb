"""The local demo: a real canary release or A/B experiment of the search stack on this machine, under load."""
