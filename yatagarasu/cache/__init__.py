"""Tiered object caching: keys and entries, layers (memory, disk, redis), the tiered cache."""
