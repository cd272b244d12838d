"""The Triton kernels: one module per op, each importing only torch and triton.

Nothing here is imported at package import: ``ops._dispatch`` imports a kernel module by
name (an ``Op``'s ``kernel`` entry) the first time the kernel is to run, so
advssm.ssm_layers works without triton installed.
"""
