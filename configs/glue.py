"""The official recipe on one GLUE task, with the often-changed axes as a string.

    python train.py --config configs/glue.py:task=rte,stage=all --workdir runs/rte
    python train.py --config configs/glue.py:task=stsb,stage=width_depth --workdir runs/stsb

Accepted keys: task, stage, pretrained, train_size, seq. Anything else:
``--config.x=y`` overrides (a typo is an error).
"""
from configs import default

_KEYS = {"task": str, "stage": str, "pretrained": str, "train_size": int, "seq": int}


def parse(arg: str) -> dict:
    return default.parse_arg(arg, _KEYS)


def get_config(arg: str = ""):
    c = default.get_config()
    a = parse(arg)
    c.task = a.get("task", c.task)
    c.stage = a.get("stage", c.stage)
    c.model.pretrained = a.get("pretrained", c.model.pretrained)
    c.data.train_size = a.get("train_size", c.data.train_size)
    c.data.max_seq_length = a.get("seq", c.data.max_seq_length)
    return c
