"""``python -m gradscope`` runs the command line."""

from gradscope.cli import main

if __name__ == "__main__":
    main(prog_name="gradscope")
