"""`python -m app.report`: the command. Its code is app/reporting/report.py (`--help` lists the options)."""

from app.reporting.report import main

if __name__ == "__main__":
    main()
