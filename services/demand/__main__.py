"""Run the demand service: ``python -m services.demand``."""

from meshkit.lifecycle import main
from meshkit.settings import ServiceSettings, load
from services.demand.app import MIGRATIONS, SCHEMA, build

if __name__ == "__main__":
    main(load(ServiceSettings, service_name="demand"), schema=SCHEMA, migrations=MIGRATIONS, build=build)
