"""zimage-sse: Z-Image-Turbo as a service that streams every phase and step over Server-Sent Events."""

__version__ = "0.1.0"
