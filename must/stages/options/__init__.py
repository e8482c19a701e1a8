"""Each built-in stage kind's ``Options`` dataclass, in modules that import neither torch nor lightning."""
