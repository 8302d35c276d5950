"""Developer tooling: the launcher behind `make run`, shared with the tests and the benchmark."""
