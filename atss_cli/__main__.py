import sys

from atss_cli.cli.main import main

sys.exit(main())
