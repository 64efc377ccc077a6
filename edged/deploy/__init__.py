"""Functions deployed over the HTTP API, pinned by module digest, with versions and rollback.

``modules`` is the content-addressed store of uploaded modules, ``registry`` the deployed functions and
their versions (a JSON file under ``state_dir``, written atomically), ``ceilings`` what an API deploy may
grant, ``rollback`` the watch on a new version's first calls, ``runnable`` which deployed functions run (and the
one merge with the config's), ``space`` the module store's bound, ``service`` the Deployer that ties them to
the running pool (through the face), ``client`` the ``edged deploy`` command's HTTP client.
"""

from __future__ import annotations

from edged.deploy.runnable import deployed_functions, merge_functions
from edged.deploy.service import Deployer, DeployTarget

__all__ = ["DeployTarget", "Deployer", "deployed_functions", "merge_functions"]
