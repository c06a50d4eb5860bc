"""One module per CPU kernel: its compute (TE), when it applies, its legalization and its schedule rule.

The order in which they are tried is the table in ``edgec/targets/cpu/registry.py``.
"""
