"""stages of must."""
