"""In-pod side of a task: runner shim, sequencer, filers."""
