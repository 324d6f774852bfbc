"""Run a matcher worker: ``python -m services.matcher``."""

from meshkit.lifecycle import main
from meshkit.settings import load
from services.matcher.app import MIGRATIONS, SCHEMA, MatcherSettings, build

if __name__ == "__main__":
    main(load(MatcherSettings), schema=SCHEMA, migrations=MIGRATIONS, build=build)
