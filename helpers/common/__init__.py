"""What the notebook side and the ranks both need, pure standard library (no torch, no ipyparallel)."""
