"""Training and evaluation: one loop for every backend (issue 4, "Training and evaluation").

- `config.TrainConfig`: the loop's knobs (optimizers, clipping, dtype, steps, seed).
- `optim`: dense parameters with AdamW, embedding tables with row-wise Adagrad.
- `loop.train`: a single streaming pass over the train split, DDP-aware.
- `evaluate.evaluate`: NE, AUC, log loss, calibration, oracle NE and gap closed; exact across ranks.
- `distributed`: torch.distributed set-up from torchrun's environment variables.
- `results`: schema-versioned result documents written atomically.
- `runner.run_training`: the whole `kunbench train` path as a library call.
"""
