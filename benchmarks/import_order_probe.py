"""Load one GGUF with every layer offloaded, after importing numpy and llama_cpp in a chosen order;
print the shared libraries the process had mapped just before the load. Used on the GPU machine
to study the crash seen when numpy was imported before llama_cpp.

    python benchmarks/import_order_probe.py numpy-first|llama-first|blas-first|rast-numpy-first|numpy-llama-rast MODEL.gguf
"""

import faulthandler
import os
import sys

faulthandler.enable()
order, path = sys.argv[1], sys.argv[2]


def mapped_libs():
    libs = set()
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) >= 6 and ".so" in parts[5]:
            libs.add(parts[5])
    return sorted(libs)


if order == "numpy-first":
    import numpy  # noqa: F401
    import llama_cpp  # noqa: F401
elif order == "llama-first":
    import llama_cpp  # noqa: F401
    import numpy  # noqa: F401
elif order == "blas-first":  # only numpy's bundled libraries (OpenBLAS, gfortran...), no numpy module
    import ctypes, glob, importlib.util
    root = os.path.dirname(os.path.dirname(importlib.util.find_spec("numpy").origin))
    for lib in sorted(glob.glob(os.path.join(root, "numpy.libs", "*.so*"))):
        print("preloading", lib, flush=True)
        ctypes.CDLL(lib, mode=ctypes.RTLD_LOCAL)
    import llama_cpp  # noqa: F401
elif order == "rast-numpy-first":
    import numpy  # noqa: F401
    import rast_gguf  # noqa: F401
elif order == "numpy-llama-rast":  # too late for the fix: libllama was bound before rast_gguf ran
    import numpy  # noqa: F401
    import llama_cpp  # noqa: F401
    import rast_gguf  # noqa: F401
else:
    raise SystemExit(f"unknown order {order}")

with open(os.environ.get("PROBE_LIBS", "/dev/null"), "w") as f:
    f.write("\n".join(mapped_libs()) + "\n")

if order.startswith("rast") or order.endswith("rast"):
    from rast_gguf.handles import Model

    model = Model(path, n_gpu_layers=99)
    print(order, "loaded through rast_gguf:", model.n_vocab, "tokens", flush=True)
    model.close()
else:
    from llama_cpp import llama_cpp as C

    params = C.llama_model_default_params()
    params.n_gpu_layers = 99
    handle = C.llama_model_load_from_file(path.encode(), params)
    print(order, "loaded:", bool(handle), flush=True)
    C.llama_model_free(handle)
