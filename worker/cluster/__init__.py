"""The cluster seam: one protocol, a Kubernetes backend and a local single-machine runtime."""
