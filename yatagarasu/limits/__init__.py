"""Rate limits: the algorithms, the bounded local limiter, the shared Redis limiter."""
