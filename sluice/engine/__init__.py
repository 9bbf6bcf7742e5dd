"""The engine: dispatch under the limiter, submit, poll, retry, chain."""
