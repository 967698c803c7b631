"""The bottom layer: atomic writes, append-only JSON logs, content hashes, PNG figures and the shared progress display.

Every other package may import these; they import nothing else from ``domain_lm``.
"""
