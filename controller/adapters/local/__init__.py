"""The local platform: the ports over processes on this machine (the search stack, the local mesh, state files)."""
