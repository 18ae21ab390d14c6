import sys

from viker.cli import main

sys.exit(main())
