import sys
from pathlib import Path

# pytest runs in importlib mode: make the shared test helpers (fakes.py) importable for this folder
sys.path.insert(0, str(Path(__file__).parent))
