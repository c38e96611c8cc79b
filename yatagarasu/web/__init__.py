"""The HTTP surface: a twisted.web Resource tree, request limits, errors and streaming."""
