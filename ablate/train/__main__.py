"""`python -m ablate.train RUN_DIR`: train or resume one run dir (exit codes: trainer.main)."""
import sys

from ablate.train.trainer import main

if __name__ == "__main__":
    sys.exit(main())
