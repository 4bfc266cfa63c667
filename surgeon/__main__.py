import sys

from surgeon.cli import main

sys.exit(main())
