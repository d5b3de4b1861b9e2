"""Data: WebDataset shards, cards, the reader, mixtures, resampling, and generated data."""
from xr0.data import synthetic  # noqa: F401
