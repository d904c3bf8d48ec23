"""RDDN training side: model, data, training loop and evaluation.

Importing this package must stay cheap and torch-free; torch is imported by the submodules that need it.
"""
