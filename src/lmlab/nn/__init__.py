"""Shared building blocks: each file one job (attention, layers)."""
