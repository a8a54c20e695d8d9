from . import rollback as _rollback  # noqa: F401,E402 - registers `provision rollback`
from . import clients as _clients  # noqa: F401,E402 - registers `provision clients`
from . import doctor as _doctor  # noqa: F401,E402 - registers `provision doctor`
from . import host as _host  # noqa: F401,E402 - registers `provision host` (host driver lifecycle)
from . import bench as _bench  # noqa: F401,E402 - registers `provision bench`
