"""Platform-neutral, sans-IO core: verification, routing, encoding, running functions."""
