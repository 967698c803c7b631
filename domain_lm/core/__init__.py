"""The bottom layer: atomic writes, content hashes and the shared progress display.

Every other package may import these; they import nothing else from ``domain_lm``.
"""
