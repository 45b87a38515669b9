"""`python -m app.peers`: the command. Its code is app/reporting/peers.py (`--help` lists the options)."""

from app.reporting.peers import main

if __name__ == "__main__":
    main()
