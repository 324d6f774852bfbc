"""Run a matcher worker: ``python -m services.matcher``."""

from services.matcher.app import main

if __name__ == "__main__":
    main()
