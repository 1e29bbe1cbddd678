"""atss: train, evaluate and benchmark the ATSS detector, with the label assignment in C++/CUDA.

Importing this package is cheap: torch and the extension load only inside the modules that need them.
"""

__version__ = "0.1.0"
