"""The training recipe and what it needs: checkpoints, interrupts, run folders, validation."""
