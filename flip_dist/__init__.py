"""flip_dist: distributed FLIP."""
