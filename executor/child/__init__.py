"""Runs inside the sandbox: stdlib only, never grpc or executor internals."""
