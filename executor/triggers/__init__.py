"""Trigger language and engine: parse trigger expressions, match events, fire callbacks."""
