"""`lmlab zoo`: the lecture's summary table of the lineage, generated from the family registry."""
