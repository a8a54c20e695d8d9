"""The node's command-line tools (`pct`, `pvesh`), run over SSH inside the host namespace."""
