"""The command line: parse, call the library, turn errors into exit codes."""
