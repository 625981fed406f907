"""A local imitation of arXiv for tests, CI and the demo: corpus generator + HTTP server."""
