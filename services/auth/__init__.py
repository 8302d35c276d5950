"""Auth: API keys (stored only as hashes) and the admin key."""
