"""The simulated node's HTTPS API (PVE::API2 routes): server, auth glue, TLS, one module per route group."""
