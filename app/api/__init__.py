"""HTTP handlers, one module per group of TES operations."""
