"""Reusable layers (grouping, tokenizer, attention blocks, local aggregation, heads).

Kept free of imports so that importing one layer module never pulls the others.
"""
