"""Benchmarks that measure the service side by side with what it is compared to, in one run."""
