"""``python -m cxrpipe`` (and ``accelerate launch -m cxrpipe``) run the CLI."""

from cxrpipe.cli import main

if __name__ == "__main__":
    main()
