"""The release spec, parsed and validated: the release itself, its A/B experiment and its hooks."""
