"""Data: WebDataset shards, cards, the reader, mixtures, resampling, and generated data."""
from xr0.data import module, synthetic  # noqa: F401  (their imports register DATASETS entries)
from xr0.data.cards import CardError, DataCard, find_card, load_card  # noqa: F401
from xr0.data.resample import resample, resample_streams, timeline  # noqa: F401
from xr0.data.stats import load_stats  # noqa: F401
from xr0.data.writer import write_episodes, write_vl_samples  # noqa: F401
