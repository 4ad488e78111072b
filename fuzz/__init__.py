"""atheris fuzz harnesses: run one as ``python fuzz/<harness>.py -atheris_runs=N`` (exit 0: nothing found)."""
