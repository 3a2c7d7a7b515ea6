"""rast-gguf: RAST decoding for GGUF models on llama.cpp.

z = z_large + sum_i alpha_i * (z_tuned_i - z_base_i), then llama.cpp's samplers. The library API:
`RastEngine` (models and contexts), `stream_generate` / `generate`, `SamplingParams`, `DeltaPair`.
Importing the package loads llama-cpp-python's libllama first and only then the C++ extension
linked to it (see rast_gguf/_llama.py), so user import order does not matter.
"""

from rast_gguf import _llama  # noqa: F401  (must be first: loads libllama)
from rast_gguf import _ext  # noqa: F401
from rast_gguf.engine import RastEngine
from rast_gguf.errors import RastError
from rast_gguf.generate import GenerationResponse, GenerationResult, generate, stream_generate
from rast_gguf.sampling import DeltaPair, SamplingParams

__version__ = "0.1.0"
__all__ = ["RastEngine", "RastError", "GenerationResponse", "GenerationResult", "generate",
           "stream_generate", "DeltaPair", "SamplingParams", "__version__"]
