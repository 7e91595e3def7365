"""`python -m healthcheck …` runs the same command line as the `healthcheck` script."""

from .cli import main

if __name__ == "__main__":
    main()
