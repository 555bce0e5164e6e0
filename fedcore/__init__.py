"""fedcore: federated learning with event-driven strategies and one runtime for simulation and deployment."""

__version__ = "0.1.0"
