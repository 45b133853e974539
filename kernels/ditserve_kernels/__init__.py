"""ditserve_kernels: Triton kernels for DiT inference, each with a torch reference and a custom op.

Independent of serving (DESIGN.md, "Kernels"). The kernels themselves arrive with issue 6; this
package exists now so the distribution's layout is final.
"""
