"""C{python -m slaveapi.cli}: the same as the C{slaveapi-cli} console script."""

from slaveapi.cli import main

main()
