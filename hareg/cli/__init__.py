"""The ``hareg`` command line: ``main`` parses the arguments (main.py); each
group of subcommands has its module, and ``client`` is their HTTP client."""
