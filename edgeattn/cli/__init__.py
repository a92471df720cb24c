"""The click command line: parse, call the library, print."""
