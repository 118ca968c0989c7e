"""torch.distributed's listeners bound to the node's Ray address instead of every interface.

Ray Train's torch backend starts the process group's TCPStore on rank 0 with `env://`, and torch's
TCPStore server then listens on all interfaces (`::`): torch has no bind-address option for it. It
does take an already listening socket (`master_listen_fd`), and a multi-tenant TCPStore reuses the
server already running in its process for the same port. So rank 0 first opens a socket on its node
address (loopback for a private local Ray), starts the store server on it, and the process group
that Ray Train's own setup then creates joins that server. Gloo's and NCCL's sockets go to the
interface holding the node address (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, unless the user set
them). Everything else is Ray Train's own setup, called as it is (pinned ray==2.60.0)."""
from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

# The running store server and its socket, per worker process: the process group's store keeps
# using the server, and closing the socket would close the listener under it.
_SERVERS: list[Any] = []


def _interface_of(address: str) -> str | None:
    """The network interface that holds `address` (e.g. 'lo' for 127.0.0.1)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def _serve_store(world_size: int, timeout_s: int) -> tuple[str, int]:
    """On rank 0: a TCPStore server listening on this node's address only; returns (address, port)."""
    from torch.distributed import TCPStore

    address = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    store = TCPStore(address, port, world_size, True, datetime.timedelta(seconds=timeout_s),
                     wait_for_workers=False, multi_tenant=True, master_listen_fd=sock.fileno())
    _SERVERS.append((sock, store))
    return address, port


def _bind_env(address: str, port: int) -> None:
    """Every worker: where the store is, and which interface gloo / NCCL sockets use."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    interface = _interface_of(ray.util.get_node_ip_address())
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)


class _NodeBoundBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        n = len(worker_group)
        address, port = worker_group.execute_single(0, _serve_store, world_size=n, timeout_s=backend_config.timeout_s)
        worker_group.execute(_bind_env, address=address, port=port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend_config.backend,
                                                   world_rank=i, world_size=n, init_method="env://",
                                                   timeout_s=backend_config.timeout_s) for i in range(n)])


class NodeBoundTorchConfig(TorchConfig):
    """TorchConfig whose process group listens on the node address only (see the module doc)."""

    @property
    def backend_cls(self) -> type:
        return _NodeBoundBackend
