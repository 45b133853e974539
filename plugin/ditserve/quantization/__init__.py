"""Weight/activation quantization and attention backends, registered in `ditserve.registry.QUANTIZERS`."""

BUILTINS: dict[str, str] = {
    "fp8": "ditserve.quantization.fp8:FP8",
    "int8": "ditserve.quantization.int8:Int8Weight",
    "lbq": "ditserve.quantization.lbq:LBQ",
    "mixdq": "ditserve.quantization.mixdq:MixDQ",
    "mixed": "ditserve.quantization.mixed:MixedPrecision",
    "none": "ditserve.quantization.none:NoQuant",
    "sage": "ditserve.quantization.sage:SageAttentionBackend",
    "sparse": "ditserve.quantization.sparse:SparseAttentionBackend",
    "svdquant": "ditserve.quantization.svdquant:SVDQuant",
    "tfm-ptq": "ditserve.quantization.tfm_ptq:TFMPTQ",
    "vq4dit": "ditserve.quantization.vq4dit:VQ4DiT",
    "w8a8": "ditserve.quantization.w8a8:W8A8",
}
"""The built-in strategies, name → "module:Class": a module is imported when its name is first looked up."""
