"""xr0: vision-language-action policies trained in stages (the Xiaomi-Robotics-0 recipe)."""
__version__ = "0.1.0"
