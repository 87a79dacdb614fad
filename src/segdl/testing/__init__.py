"""Test helpers, public so that segdl's tests, demo and benchmarks share them.

* :mod:`segdl.testing.rangeserver` — an in-process HTTP/1.1 server with RFC 9110 byte ranges
  written independently of segdl's client, and scriptable faults.
* :mod:`segdl.testing.tls` — self-signed certificates (needs ``cryptography``, imported lazily).
* :mod:`segdl.testing.nginx` — a private nginx on loopback for integration tests and benchmarks.
"""

from .nginx import Nginx as Nginx
from .nginx import NginxError as NginxError
from .nginx import NginxFactory as NginxFactory
from .nginx import find_nginx as find_nginx
from .nginx import nginx_available as nginx_available
from .rangeserver import Fault as Fault
from .rangeserver import RangeServer as RangeServer
from .rangeserver import RequestInfo as RequestInfo
from .rangeserver import RequestRecord as RequestRecord
from .rangeserver import Resource as Resource
from .tls import CertPair as CertPair
from .tls import client_context as client_context
from .tls import make_self_signed as make_self_signed
from .tls import server_context as server_context
