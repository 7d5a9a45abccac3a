import sys

from qwen_operator.cli import main

sys.exit(main())
