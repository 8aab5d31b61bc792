#!/usr/bin/env python
"""PDSL command line: the same stages the Snakefile runs, for a person.

The commands live in ``pdsl/commands/``; ``python cli.py --help`` lists them and
``python cli.py COMMAND --help`` says what one reads and writes.
"""
from pdsl.commands import cli

if __name__ == "__main__":
    cli()
