"""Pretraining losses, one file per objective."""
