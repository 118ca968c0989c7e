"""Connect to a Ray cluster, or start a private local one: token authentication on, every listener
on loopback.

Ray 2.60 turns token authentication on for a cluster that `ray.init()` starts (the token lives in
`~/.ray/auth_token`, or where RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN say) and sets RAY_AUTH_MODE=token
in this process, so every worker inherits it: nothing here or in the workers may switch it off.

Binding: `ray.init(_node_ip_address="127.0.0.1")` is not enough, since Ray replaces a loopback node
address by the machine's outward one, and then GCS, raylet, workers, dashboard agent and runtime-env
agent listen on every interface. Ray keeps a single-node cluster on loopback where it supports no
multi-node clusters (macOS, Windows): `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`. A private local Ray is
single-node by definition, so it starts that way; see `loopback_only`. torch.distributed's own
listeners (TCPStore, gloo) are bound to the node address by flip_dist.distributed.rendezvous."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from urllib.parse import urlparse

from flip_dist.config import RayConfig

log = logging.getLogger(__name__)
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


@contextmanager
def loopback_only() -> Iterator[None]:
    """While Ray starts a node: its address is loopback. The variable reaches every process Ray
    starts (they inherit this environment); Ray read it into a constant when first imported, so the
    constant is set too. Both are restored afterwards."""
    from ray._private import ray_constants

    before_env, before_const = os.environ.get(SINGLE_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(SINGLE_NODE_ENV, None)
        else:
            os.environ[SINGLE_NODE_ENV] = before_env


def _is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return host == "localhost" or host in LOOPBACK or host.startswith("127.")


@contextmanager
def ray_session(cfg: RayConfig, *, dashboard: bool = True) -> Iterator[None]:
    """Use the running Ray (`ray job submit` sets RAY_ADDRESS), else start a local one for the
    duration: loopback only, token auth on. Shuts down only what it started. `dashboard=False` (data
    jobs, which use neither it nor metrics) leaves out the dashboard and the metrics export, CPU that
    the workers of a small node would otherwise share."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # A loopback address would be rewritten to the outward one, where a loopback cluster is not.
        with loopback_only() if _is_loopback(address) else nullcontext():
            ray.init(address=address, logging_level=logging.WARNING)
    else:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            log.warning("this environment switches Ray's token authentication off (RAY_AUTH_MODE): the local "
                        "Ray starts without it (its listeners are still on loopback only)")
        # address="local": always a private instance, never a cluster that `ray start` left running.
        # The dashboard (loopback only) serves the state API that Ray Train's placement-group
        # cleaner polls; without it that actor warns every few seconds.
        with loopback_only():
            ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                     _system_config={"enable_metrics_collection": dashboard},
                     _temp_dir=cfg.temp_dir, logging_level=logging.WARNING, log_to_driver=True)
    started = _ray_tree(_ray_children()) if not address else []
    try:
        yield
    finally:
        tree = _ray_tree(started)                  # the workers too, while the raylet still parents them
        ray.shutdown()
        _reap(tree)


def _ray_children() -> list:
    """The processes a private Ray started as this process's children: GCS, raylet, dashboard, log
    monitor (every one runs a Ray binary or a module of the ray package)."""
    import psutil

    mine = []
    for p in psutil.Process().children():
        try:
            if "ray" in " ".join(p.cmdline()):
                mine.append(p)
        except psutil.Error:
            pass
    return mine


def _ray_tree(roots: list) -> list:
    import psutil

    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            procs.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return list(procs.values())


def _reap(procs: list, grace_s: float = 15.0) -> None:
    """After `ray.shutdown()`: wait for every process of our private Ray to exit, then kill the
    rest. A worker busy in native code (a Ray Train controller, a torch op) can outlive its raylet
    by minutes, orphaned to init, holding memory and cores of a shared machine."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            log.warning("Ray process %d (%s) outlived the shutdown by %.0f s: killing it", p.pid, p.name(), grace_s)
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
