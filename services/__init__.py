"""chatkore's gRPC services: auth, billing, inference, and what they share."""
