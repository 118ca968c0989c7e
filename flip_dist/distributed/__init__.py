"""Distributed runtime: Ray Train workers, TorchRec sharding, DeepSpeed engines."""
