"""The local runtime: Kubernetes Jobs run on this machine, each container in a bubblewrap sandbox.

See docs/local-runtime.md. ``LocalCluster`` implements ``worker.cluster.base.Cluster``.
"""

from __future__ import annotations

from worker.cluster.local.cluster import LocalCluster
from worker.cluster.local.process import check_bwrap

__all__ = ["LocalCluster", "check_bwrap"]
