"""Multi-process runners on torch.distributed, registered in `ditserve.registry.PARALLEL`."""

BUILTINS: dict[str, str] = {
    "asyncdiff": "ditserve.parallel.asyncdiff:AsyncDiff",
    "cfg": "ditserve.parallel.cfg:CFGParallel",
    "data": "ditserve.parallel.data:DataParallel",
    "distrifusion": "ditserve.parallel.distrifusion:DistriFusion",
    "none": "ditserve.parallel.none:SingleProcess",
    "pipefusion": "ditserve.parallel.pipefusion:PipeFusion",
    "ring": "ditserve.parallel.ring:Ring",
    "ulysses": "ditserve.parallel.ulysses:Ulysses",
    "usp": "ditserve.parallel.usp:USP",
    "video-infinity": "ditserve.parallel.video_infinity:VideoInfinity",
}
"""The built-in strategies, name → "module:Class": a module is imported when its name is first looked up."""
