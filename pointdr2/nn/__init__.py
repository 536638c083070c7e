"""Reusable layers (tokenizer, attention blocks, PointNeXt layers and chunked grouping, heads).

Kept free of imports so that importing one layer module never pulls the others.
"""
