RANGES = ""
WHITESPACE = frozenset()
