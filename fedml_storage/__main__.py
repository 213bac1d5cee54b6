"""`python -m fedml_storage` runs the `fedml-storage` command line."""

from .cli import main

main()
