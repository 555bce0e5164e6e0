"""Server-side aggregation strategies: pure policy and math over flat tensors, no I/O."""
