"""Entry point: `python server.py serve …` is the same command as `vlserve serve …`."""

from vlserve.cli import main

if __name__ == "__main__":
    main()
