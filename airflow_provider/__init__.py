"""Apache Airflow 3 provider for fedml-storage: a hook, a connection type, operators, a sensor and Assets."""

from fedml_storage import __version__

__all__ = ["__version__"]
