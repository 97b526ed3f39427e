"""The `spartan` command and the tooling that runs the API and the workers."""
