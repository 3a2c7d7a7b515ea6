"""The toy reasoning triple: pretraining two bases, RL on each, export to Hugging Face format (see README.md)."""
