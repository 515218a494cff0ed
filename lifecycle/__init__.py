"""lifecycle: take Hugging Face causal LMs through their whole life from one CLI."""

__version__ = "0.1.0"
