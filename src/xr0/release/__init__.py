"""Import and export of the released Xiaomi-Robotics-0 checkpoints (`MiBoTForActionGeneration` format).

keymap.py   the one table: released tensor name <-> xr0 tensor name, with the expected shape
layout.py   reading and writing a release directory (config.json, safetensors shards, processor files)
importer.py release directory -> xr0 export directory (weights + metadata with embodiments and stats)
exporter.py xr0 export or checkpoint -> release directory the released inference code can serve
"""
