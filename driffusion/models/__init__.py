"""Models the project ships and trains itself (weights inside the package)."""
