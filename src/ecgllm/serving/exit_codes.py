"""Exit codes of every `ecgllm` command, so a shell script can rely on them."""

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT = 0, 1, 2, 3, 4
EXIT_CODES_HELP = """exit codes:
  0  success
  2  bad command-line usage
  3  the input file cannot be read as an ECG (the message says why and what to do)
  4  the output file could not be written
  1  unexpected internal error (re-run with --debug for the traceback)"""
