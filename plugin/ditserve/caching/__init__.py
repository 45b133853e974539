"""Feature caching across denoising steps: one strategy per file, registered in `ditserve.registry.CACHES`."""

BUILTINS: dict[str, str] = {
    "ab-cache": "ditserve.caching.abcache:ABCache",
    "adacache": "ditserve.caching.adacache:AdaCache",
    "block-caching": "ditserve.caching.blockcaching:BlockCaching",
    "dbcache": "ditserve.caching.dbcache:DBCache",
    "deepcache": "ditserve.caching.deepcache:DeepCache",
    "duca": "ditserve.caching.duca:DuCa",
    "delta-dit": "ditserve.caching.deltadit:DeltaDiT",
    "fastercache": "ditserve.caching.fastercache:FasterCache",
    "fbcache": "ditserve.caching.fbcache:FBCache",
    "fora": "ditserve.caching.fora:Fora",
    "icc": "ditserve.caching.icc:ICC",
    "learning-to-cache": "ditserve.caching.learningtocache:LearningToCache",
    "magcache": "ditserve.caching.magcache:MagCache",
    "none": "ditserve.caching.none:NoCache",
    "pab": "ditserve.caching.pab:PAB",
    "smoothcache": "ditserve.caching.smoothcache:SmoothCache",
    "taylorseer": "ditserve.caching.taylorseer:TaylorSeer",
    "teacache": "ditserve.caching.teacache:TeaCache",
    "tgate": "ditserve.caching.tgate:TGate",
    "toca": "ditserve.caching.toca:ToCa",
}
"""The built-in strategies, name → "module:Class": a module is imported when its name is first looked up."""
