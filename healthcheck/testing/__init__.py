"""Training subjects and tools for measuring the harness on code it was not written from."""
