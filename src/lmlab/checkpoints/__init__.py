"""Saving and loading model dirs (safetensors + JSON) and converters for foreign layouts."""
