"""Coordinator: the event loop that drives a strategy, and its simulation and gRPC drivers."""
