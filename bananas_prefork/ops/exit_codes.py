"""Exit codes of every command (the contract's table), shared by the CLI and ``start``'s
fast path."""

EXIT_FAILURE = 1  # no master, Redis unreachable or refusing, an unknown job: not the input
EXIT_USAGE = 2  # a bad file, option or argument: the message says what is allowed
EXIT_ALERTING = 3  # status --check: an alert is firing
EXIT_INTERRUPTED = 130  # Ctrl-C
