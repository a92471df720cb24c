"""The hostile-input catalogue: cases written as data, run through the real CLI in a subprocess."""
