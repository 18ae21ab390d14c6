import sys

from viker.cli import main

if __name__ == "__main__":  # `python -m viker`; importing the module (pydoc, a package walk) runs nothing
    sys.exit(main())
