"""`python -m app.bench`: the command. Its code is app/reporting/bench.py (`--help` lists the options)."""

from app.reporting.bench import main

if __name__ == "__main__":
    main()
