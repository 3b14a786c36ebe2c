"""The README demo: the whole DynaBERT pipeline on CPU in under twelve minutes (2 cores).

    python train.py                      # = --config configs/demo.py --workdir runs/demo

The real all-MiniLM-L6-v2 BERT (6 layers, hidden 384) on a fixed 2,000-example subset of
SST-2 at sequence length 64 (no dev sentence is longer): teacher fine-tuning (1 epoch),
rewiring, DynaBERT_W (4 widths, 40 steps) and DynaBERT (4 widths x 3 depths, 40 steps),
then the 12-cell table on the full SST-2 dev set. Each stage is evaluated once, at its
end. Without ../shared/data it uses the SST-2 slice shipped in dynabert_jax/demo_data.

Deviations from the official recipe, to fit CPU minutes: far fewer steps, so learning
rates of 1e-4 instead of 2e-5, and rewiring importance in batches of 32 instead of 8.
"""
from configs import default


def get_config():
    c = default.get_config()
    c.task = "sst2"
    c.data.max_seq_length = 64
    c.data.train_size = 2000
    c.data.keep_partial_batch = False   # as when the demo's times were measured
    c.teacher.num_epochs = 1.0
    c.teacher.learning_rate = 1e-4
    c.teacher.eval_every = 0
    c.rewire.batch_size = 32
    for stage in (c.width, c.width_depth):
        stage.max_steps = 40
        stage.learning_rate = 1e-4
        stage.eval_every = 0
    c.log_every = 5
    c.report_memory = False
    return c
