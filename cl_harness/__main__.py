import sys

from cl_harness.cli import main

sys.exit(main())
