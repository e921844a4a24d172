"""The gateway: runs requests through a Flow's DAG and serves it over gRPC, HTTP and WebSocket."""
