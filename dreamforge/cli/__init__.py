"""The ``df`` command line. Thin: parse, call the job service, render."""
