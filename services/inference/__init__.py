"""Inference: relays OpenAI calls to upstream channels, holding and settling credits."""
