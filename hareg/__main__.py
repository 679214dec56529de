import sys

from hareg.cli import main

sys.exit(main())
