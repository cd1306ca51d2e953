"""How the networks run: one backend interface for every pipeline (``backends.py``).

    networks.py   what a backend is given: the pipeline's networks, its options, the cache folder
    backends.py   the table of backends, the rule of "auto", resolve_backend
    eager.py      the modules with cheap, safe speed-ups (every other backend starts here)
    compiled.py   torch.compile with static shapes, CUDA graphs on GPU
    tensorrt/     ONNX export, engine cache, engine runner, and the set-up that routes calls to engines
    padding.py    a smaller batch padded to the one a graph or engine was built for
"""
