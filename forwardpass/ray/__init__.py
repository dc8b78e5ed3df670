"""Engine replicas on Ray Serve behind one OpenAI-compatible ingress (`pip install forwardpass[ray]`).

`router.py` (prefix-aware routing) and `replicas.py` (a replica's engine, and the ingress's engine over the
replicas) import no Ray; `deploy.py` makes them Ray Serve deployments. `build_app(config, replicas)` gives the
application to `serve.run` or `serve run`; `forwardpass serve MODEL --replicas N` deploys it on a local Ray
instance or, with `--ray-address`, on a cluster.
"""

from __future__ import annotations

from typing import Any


def build_app(*args: Any, **kwargs: Any) -> Any:
    """`deploy.build_app`: the Ray Serve application (imports Ray)."""
    from .deploy import build_app as build

    return build(*args, **kwargs)


__all__ = ["build_app"]
