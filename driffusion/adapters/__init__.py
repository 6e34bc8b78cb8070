"""Adapters at the edges: distributed execution and diffusers pipelines, built on the core."""
