from . import rollback as _rollback  # noqa: F401,E402 - registers `provision rollback`
