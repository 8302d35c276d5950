"""The HTTP edge: OpenAI's API and the admin API, translated to gRPC calls."""
