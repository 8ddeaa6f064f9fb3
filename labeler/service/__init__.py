"""What an operator runs: the application wiring (``app``), the CLI, the scheduler and signal
handling. May import every layer except ``labeler.demo`` (the CLI's ``demo`` command loads it
lazily).
"""
