"""Speed paths that are not the idea itself, one module each, beside the teaching modules.

A teaching module (`minids.attention`, `minids.mla`, `minids.moe`, `minids.fp8`) shows its technique in
its plainest correct form and chooses a kernel here in one commented line. Every kernel computes
what its plain form computes, in value and gradient, and tests/test_kernels.py checks that.

| kernel | replaces | CPU | GPU / TPU |
|---|---|---|---|
| `attention.causal_attention` | `attention.causal_self_attention` (training pass) | blockwise, hand-written backward | `jax.nn.dot_product_attention` (XLA) |
| `moe_dispatch.dispatch` | `moe.dispatch_reference` | blocks of rows, gather-only custom VJPs | `jax.lax.ragged_dot` |
| `fp8_accumulate.limited_precision_matmul` | `fp8.limited_precision_matmul_reference` | scan over promotion windows, rows chunked to fit a cache | the same |
| `host_memory.keep_freed_memory` | glibc's default malloc settings | an explicit call (CLI, benchmarks) | not used |

This package imports none of its modules, so importing one kernel never imports another.
"""
