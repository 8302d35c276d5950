"""Plumbing every chatkore process shares: config, logs, database, gRPC lifecycle, errors."""
