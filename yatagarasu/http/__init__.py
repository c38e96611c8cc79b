"""HTTP semantics (RFC 9110/9111): dates, ranges, conditionals, freshness, status phrases."""
