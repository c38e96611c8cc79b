"""Yatagarasu: a read-only HTTP proxy for S3-compatible object stores, built on Twisted."""

__version__ = "0.1.0"
