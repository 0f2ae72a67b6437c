"""Data: source readers (MIMIC-CXR, IU X-ray, demo), report cleaning, the manifest and the image cache."""
