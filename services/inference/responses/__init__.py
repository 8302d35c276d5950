"""The Responses API (POST /v1/responses): its items and events, spoken natively or through chat completions."""
