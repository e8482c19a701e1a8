"""rewards of must."""
