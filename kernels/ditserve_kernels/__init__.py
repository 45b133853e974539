"""ditserve_kernels: Triton kernels for DiT inference, each with its torch reference and a custom op.

One module per kernel (reference, Triton kernel, launcher, `torch.library` op with a fake):
`w8a8_gemm`, `w4a4_gemm`, `vq_gemm`, `adaln_layernorm`, `sage_attention`, `sparse_attention`. Each op runs the
Triton kernel on CUDA tensors (or under `TRITON_INTERPRET=1`) and the reference elsewhere
(`_runtime.use_triton`). Importing this package imports no kernel module, so no Triton: import the
module you need. Keep this file free of code: an editable install may load the folder as a namespace
package, which never runs it.
"""
