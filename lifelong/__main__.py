import sys

from lifelong.platform.cli import main

sys.exit(main())
