"""`python -m ablate.train RUN_DIR`: train or resume one run dir (exit codes: job.main)."""
import sys

from ablate.train.job import main

if __name__ == "__main__":
    sys.exit(main())
