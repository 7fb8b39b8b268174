"""Configuration: the typed schema, the other tools' command-line flags, loading and checking."""
