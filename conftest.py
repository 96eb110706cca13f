"""Test configuration shared by the unit tests and nbval's run of lora_mock.ipynb."""
import os

# nbval runs the notebook in a kernel started by this process, which inherits the environment: with the swap
# on, the notebook uses the reference solution, so `pytest` checks the drill end to end with no flag to remember.
os.environ["LORA_DRILL_SOLUTION"] = "1"
