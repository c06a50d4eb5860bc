"""The CPU backend (x86-64 and AArch64 through LLVM): ISA facts (isa.py), options (options.py), schedule helpers
(sched.py), one module per kernel (kernels/) in one ordered table (registry.py), the builder (build.py) and tuning.

Importing the package registers nothing; ``edgec.targets.base`` imports ``build`` to register the builder.
"""
