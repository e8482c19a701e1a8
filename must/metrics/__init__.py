"""metrics of must."""
