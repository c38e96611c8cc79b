"""S3 protocol support: request signing and upstream access."""
