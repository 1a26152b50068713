"""rpq: push folders of images through RunPod Serverless queue endpoints."""

__version__ = "0.1.0"
