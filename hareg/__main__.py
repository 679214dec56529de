import sys

from hareg.cli.main import main

sys.exit(main())
