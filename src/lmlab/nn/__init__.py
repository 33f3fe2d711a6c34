"""Shared building blocks: each file one job (attention, layers, LSTM stacks, char CNN, scalar mix)."""
