"""Evaluation at the edge: torch-fidelity metrics, classifier accuracy, deviation from serial."""
