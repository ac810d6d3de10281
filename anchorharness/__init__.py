"""The one test harness: validator fleets, proposals and an in-memory PoW chain.

Shared by tests/ and bench/ (and nothing else: an import-linter contract in
pyproject.toml keeps the product packages from importing it). It builds on the
product's own code (the node's round checks for signatures, the template for PSBTs)
so a test exercises what operators run.
"""
