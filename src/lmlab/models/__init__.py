"""Model families, one file each; `registry.py` maps family names to them."""
