"""Training: the FLIP step (shared by every runtime) and the loops that run it."""
