"""Connect to a Ray cluster, or start a private local one bound to loopback."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from flip_dist.config import RayConfig


@contextmanager
def ray_session(cfg: RayConfig, *, dashboard: bool = True) -> Iterator[None]:
    """Use the running Ray (`ray job submit` sets RAY_ADDRESS), else start a local one for the
    duration: loopback only. Shuts down only what it started. `dashboard=False` (data jobs, which
    use neither it nor metrics) leaves out the dashboard and the metrics export, CPU that the
    workers of a small node would otherwise share."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # address="local": always a private instance, never a cluster that `ray start` left running
        # The dashboard (loopback only) serves the state API that Ray Train's placement-group
        # cleaner polls; without it that actor warns every few seconds.
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", _system_config={"enable_metrics_collection": dashboard},
                 _temp_dir=cfg.temp_dir, logging_level=logging.WARNING, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
