"""A training command with the data-iterator part of one checkpoint save made to hang (test
helper).

`python -m tests.train.hang_in_save MODULE STEP <flags>` runs `python -m MODULE`
(mimo_jax.train.__main__ or mimo_jax.train_codec), but when checkpoint STEP writes its Grain
iterator state it prints HANGING_IN_SAVE and sleeps, so a test can kill -9 the process in the
middle of that save (its files are half written under the temporary name).
"""

import importlib
import sys
import time

import grain

_original_save = grain.checkpoint.CheckpointHandler.save


def main():
  command, hang_step = sys.argv.pop(1), sys.argv.pop(1)

  def save(self, directory, *args, **kwargs):
    if f"/{hang_step}.orbax-checkpoint-tmp" in str(directory):
      print("HANGING_IN_SAVE", flush=True)
      time.sleep(3600)
    return _original_save(self, directory, *args, **kwargs)

  grain.checkpoint.CheckpointHandler.save = save
  importlib.import_module(command).console()


if __name__ == "__main__":
  main()
