"""The README demo: the whole DynaBERT pipeline on CPU in about ten minutes.

    python train.py                      # = --config configs/demo.py --workdir runs/demo

The real all-MiniLM-L6-v2 BERT (6 layers, hidden 384) on a fixed 2,000-example subset of
SST-2 at sequence length 64: teacher fine-tuning, rewiring, DynaBERT_W (4 widths) and
DynaBERT (4 widths x 3 depths), then the 12-cell table on the full SST-2 dev set. Each
stage is evaluated once, at its end. Without ../shared/data it uses the SST-2 slice
shipped in dynabert_jax/demo_data.
"""
from configs import default


def get_config():
    c = default.get_config()
    c.task = "sst2"
    c.data.max_seq_length = 64
    c.data.train_size = 2000
    c.teacher.num_epochs = 1.0
    c.teacher.learning_rate = 5e-5
    c.teacher.eval_every = 0
    c.width.max_steps = 40
    c.width.eval_every = 0
    c.width_depth.max_steps = 40
    c.width_depth.eval_every = 0
    c.log_every = 5
    return c
