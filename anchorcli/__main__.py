import sys

from anchorcli.main import main

sys.exit(main())
