"""Speaker-check bench (issue 11): see ``__main__``."""
