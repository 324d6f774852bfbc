"""Run the roadshow service: ``python -m services.roadshow``."""

from meshkit.lifecycle import main
from meshkit.settings import ServiceSettings, load
from services.roadshow.app import MIGRATIONS, SCHEMA, build

if __name__ == "__main__":
    main(load(ServiceSettings, service_name="roadshow"), schema=SCHEMA, migrations=MIGRATIONS, build=build)
