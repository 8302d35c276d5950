"""A deterministic OpenAI-compatible stand-in, so the whole path works offline."""
