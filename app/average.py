"""`python -m app.average`: the command. Its code is app/runs/averaging.py (`--help` lists the options)."""

from app.runs.averaging import main

if __name__ == "__main__":
    main()
