"""Every socket the project's private local Ray listens on is on loopback: sampled while a real
2-worker pretraining ran (Ray Train workers, their torch.distributed store and gloo pairs, Ray Data
reading the shards, DeepSpeed, TorchRec), together with GCS, raylet, dashboard, agents and workers."""
from __future__ import annotations

import os

from flip_dist.ray_runtime import LOOPBACK


def test_private_ray_listens_on_loopback_only(uninterrupted):
    _, seen = uninterrupted("ray")
    names = {n for *_, n in seen}
    print(f"{len(seen)} listening sockets in {len(names)} kinds of process:")
    for ip, port, name in sorted(seen, key=lambda s: (s[2], s[1])):
        print(f"  {ip:>18}:{port:<6} {name}")
    assert any("RayTrainWorker" in n for n in names), names      # sampled while the workers ran
    assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names), names
    exposed = sorted(s for s in seen if s[0] not in LOOPBACK)
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert os.environ.get("RAY_AUTH_MODE") == "token"            # the session's Ray has token auth on
