"""Run the notifier service: ``python -m services.notifier``."""

from meshkit.lifecycle import main
from meshkit.settings import ServiceSettings, load
from services.notifier.app import MIGRATIONS, SCHEMA, build

if __name__ == "__main__":
    main(load(ServiceSettings, service_name="notifier"), schema=SCHEMA, migrations=MIGRATIONS, build=build)
