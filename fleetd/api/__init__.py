"""fleetd's HTTP API: fleet's API v1 over a unix socket (and TCP with TLS), /metrics, extensions."""
