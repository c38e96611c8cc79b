"""Client authentication: identities, failures, token sources, the JWT scheme."""
