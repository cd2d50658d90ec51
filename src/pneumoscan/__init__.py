"""pneumoscan: decision support for pneumonia on pediatric chest X-rays.

Not a diagnosis. The model is a second reader that corroborates a clinician.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
