"""``python -m gradscope`` runs the command line."""

from gradscope.show.cli import main

if __name__ == "__main__":
    main(prog_name="gradscope")
