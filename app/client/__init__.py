"""`kueue-tes task`: a command-line TES client that speaks only HTTP to a TES server."""
