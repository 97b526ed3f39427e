"""End-to-end tests: real `spartan serve` and worker processes."""
