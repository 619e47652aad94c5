"""``python -m omnitron``: the same as the ``omnitron`` command."""

from omnitron.cli import main

if __name__ == "__main__":
    main()
