"""The engine: decides which machine runs each non-global unit (fleet's engine/)."""
