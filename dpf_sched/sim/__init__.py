"""Simulation: trace files, the discrete-event replay and its results."""
