"""`python -m ablate.gpucheck OUTDIR [--cpu] ...`: what scripts/gpu-check.sh runs."""
import sys

from ablate.gpucheck.driver import main

if __name__ == "__main__":
    sys.exit(main())
