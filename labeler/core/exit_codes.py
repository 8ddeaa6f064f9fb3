"""The exit codes of every `labeler` command, defined once (README's table lists them)."""

from __future__ import annotations

EXIT_OK = 0
# A run-time failure: the database is unreachable, a pass failed, `check` or `health` found a
# problem, `calibrate` has too little evidence, a photo given to `classify` could not be read.
EXIT_FAILED = 1
# Nothing was done: invalid settings or arguments, an unusable model artifact or photo source.
EXIT_CONFIG = 2
# Stopped by Ctrl-C (SIGINT): 128 + 2, the shell's convention. SIGTERM and SIGHUP are an
# orderly stop requested by the service manager and end with EXIT_OK.
EXIT_INTERRUPTED = 130
