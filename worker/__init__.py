"""kueue-tes: the cluster side (RQ jobs, job specs, cluster backends, watcher, sequencer)."""
