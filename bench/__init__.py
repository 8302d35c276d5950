"""`make bench`: chatkore measured against the same load sent straight to a fast mock, and against LiteLLM."""
